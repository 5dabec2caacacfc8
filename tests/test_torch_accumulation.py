"""kexue.torch.GradientAccumulation against large batches, the hand-written loop, and torch's conventions."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.torch import GradientAccumulation


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def make_model(seed=0):
    """float64, so that a wrong update stands far above rounding."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
}


def diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def run(model, opt, x, y, micro, zero_first=False):
    for start in range(0, len(x), micro):
        if zero_first:
            opt.zero_grad()
        F.cross_entropy(model(x[start:start + micro]), y[start:start + micro]).backward()
        opt.step()
        if not zero_first:
            opt.zero_grad()


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("steps", [1, 3, 4])
def test_matches_large_batches(name, steps):
    x, y = make_data(288)
    big, acc = make_model(), make_model()
    run(big, OPTIMIZERS[name](big.parameters()), x, y, micro=12 * steps)
    opt = GradientAccumulation(OPTIMIZERS[name](acc.parameters()), steps)
    run(acc, opt, x, y, micro=12)
    assert diff(big, make_model()) > 1e-3  # the weights did move
    assert diff(big, acc) < 1e-12


def test_zero_grad_before_backward_works_too():
    x, y = make_data()
    big, acc = make_model(), make_model()
    run(big, torch.optim.Adam(big.parameters(), 1e-2), x, y, micro=32, zero_first=True)
    run(acc, GradientAccumulation(torch.optim.Adam(acc.parameters(), 1e-2), 4), x, y, micro=8, zero_first=True)
    assert diff(big, acc) < 1e-12


def test_matches_the_hand_written_loop():
    """The idiom the wrapper replaces: scale each micro-loss by 1/n, step every n-th micro-batch."""
    x, y = make_data()
    hand, acc = make_model(), make_model()
    opt = torch.optim.Adam(hand.parameters(), 1e-2)
    for k, start in enumerate(range(0, len(x), 8)):
        (F.cross_entropy(hand(x[start:start + 8]), y[start:start + 8]) / 4).backward()
        if (k + 1) % 4 == 0:
            opt.step()
            opt.zero_grad()
    run(acc, GradientAccumulation(torch.optim.Adam(acc.parameters(), 1e-2), 4), x, y, micro=8)
    assert diff(hand, acc) < 1e-12


def test_weights_and_state_do_not_move_between_updates():
    x, y = make_data(32)
    model = make_model()
    opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-2), 4)
    before = copy.deepcopy(model)
    for k in range(3):
        F.cross_entropy(model(x[8 * k:8 * k + 8]), y[8 * k:8 * k + 8]).backward()
        opt.step()
        opt.zero_grad()
        assert diff(before, model) == 0.0 and len(opt.state) == 0 and opt.micro_step == k + 1
    F.cross_entropy(model(x[24:]), y[24:]).backward()
    opt.step()
    assert diff(before, model) > 0 and opt.micro_step == 0
    assert all(s["step"].item() == 1 for s in opt.state.values())


def test_state_dict_round_trip_mid_cycle():
    x, y = make_data(96)
    model = make_model()
    opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-2), 4)
    run(model, opt, x[:72], y[:72], micro=8)  # 9 micro-batches: 2 updates and 1 into the third
    state = copy.deepcopy(opt.state_dict())
    assert state["micro_step"] == 1 and state["steps"] == 4

    clone = copy.deepcopy(model)
    clone_opt = GradientAccumulation(torch.optim.Adam(clone.parameters(), 1e-2), 4)
    clone_opt.load_state_dict(state)
    for p, q in zip(model.parameters(), clone.parameters()):  # the partial sum lives in .grad
        q.grad = p.grad.clone()
    assert clone_opt.param_groups is clone_opt.optimizer.param_groups
    run(model, opt, x[72:], y[72:], micro=8)
    run(clone, clone_opt, x[72:], y[72:], micro=8)
    assert diff(model, clone) == 0.0


def test_load_state_dict_rejects_foreign_states():
    model = make_model()
    opt = GradientAccumulation(torch.optim.Adam(model.parameters()), 4)
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())
    other = GradientAccumulation(torch.optim.Adam(model.parameters()), 2).state_dict()
    with pytest.raises(ValueError, match="steps=2"):
        opt.load_state_dict(other)
    with pytest.raises(ValueError, match="micro_step"):
        opt.load_state_dict({**opt.state_dict(), "micro_step": 4})


def test_schedulers_attach_to_the_wrapper_and_count_updates():
    x, y = make_data(64)
    model = make_model()
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=1.0), 4)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for update in range(2):
        run(model, opt, x[32 * update:32 * update + 32], y[32 * update:32 * update + 32], micro=8)
        schedule.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.25


def test_add_param_group_reaches_the_inner_optimizer():
    a, b = make_model(0), make_model(1)
    opt = GradientAccumulation(torch.optim.SGD(a.parameters(), lr=0.1), 2)
    opt.add_param_group({"params": list(b.parameters()), "lr": 0.5})
    assert len(opt.optimizer.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.5


def test_closure_is_evaluated():
    model = make_model()
    x, y = make_data(8)
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 1)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    assert opt.step(closure) > 0


@pytest.mark.parametrize("steps, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_bad_steps(steps, error):
    with pytest.raises(error, match="`steps`"):
        GradientAccumulation(torch.optim.SGD(make_model().parameters(), lr=0.1), steps)


def test_bad_optimizer():
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer"):
        GradientAccumulation(make_model(), 2)
    inner = GradientAccumulation(torch.optim.SGD(make_model().parameters(), lr=0.1), 2)
    with pytest.raises(ValueError, match="already a GradientAccumulation"):
        GradientAccumulation(inner, 2)
