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


# --- the wrapper in real training loops: clipping, GradScaler, schedulers, checkpoints, composition ---


def update(model, opt, clip=None, scaler=None, schedule=None):
    """One optimizer update as a training loop makes it: unscale, clip, (scaler.)step, scheduler."""
    if scaler:
        scaler.unscale_(opt)
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    if schedule:
        schedule.step()


def big_batch_loop(model, opt, x, y, batch, clip=None, scaler=None, schedule=None):
    """The reference: one update per batch, clipped / scaled / scheduled as usual."""
    for start in range(0, len(x), batch):
        loss = F.cross_entropy(model(x[start:start + batch]), y[start:start + batch])
        (scaler.scale(loss) if scaler else loss).backward()
        update(model, opt, clip, scaler, schedule)
        opt.zero_grad()


def accumulated_loop(model, opt, x, y, micro, clip=None, scaler=None, schedule=None, seen=None):
    """The loop of the docstring: clip, unscale, scaler.step/update and the scheduler only when syncing."""
    for start in range(0, len(x), micro):
        loss = F.cross_entropy(model(x[start:start + micro]), y[start:start + micro])
        (scaler.scale(loss) if scaler else loss).backward()
        if opt.sync_gradients:
            if seen is not None:
                seen.append([p.grad.clone() for p in model.parameters()])
            update(model, opt, clip, scaler, schedule)
        else:
            opt.step()
        opt.zero_grad()


def test_sync_gradients_marks_the_last_micro_batch():
    opt = GradientAccumulation(torch.optim.SGD(make_model().parameters(), lr=0.1), 3)
    flags, after = [], []
    for _ in range(7):
        flags.append(opt.sync_gradients)
        opt.step()
        after.append(opt.sync_gradients)  # what a loop reading it after step() sees: the next micro-batch's
    assert flags == [False, False, True, False, False, True, False]
    assert after == [False, True, False, False, True, False, False]
    assert GradientAccumulation(torch.optim.SGD(make_model().parameters(), lr=0.1), 1).sync_gradients


def test_grad_holds_the_mean_gradient_when_syncing():
    x, y = make_data(32)
    big, acc = make_model(), make_model()
    F.cross_entropy(big(x), y).backward()
    seen = []
    accumulated_loop(acc, GradientAccumulation(torch.optim.SGD(acc.parameters(), lr=0.0), 4), x, y, 8, seen=seen)
    assert max((p.grad - g).abs().max().item() for p, g in zip(big.parameters(), seen[0])) < 1e-15


@pytest.mark.parametrize("steps", [3, 4])
def test_clipping_when_syncing_is_big_batch_clipping(steps):
    x, y = make_data(24 * steps * 4)
    big, acc = make_model(), make_model()
    clip = 0.05  # below every batch gradient's norm (about 0.3 to 1): every update is clipped
    big_batch_loop(big, torch.optim.SGD(big.parameters(), lr=0.5), x, y, 24 * steps, clip=clip)
    accumulated_loop(acc, GradientAccumulation(torch.optim.SGD(acc.parameters(), lr=0.5), steps), x, y, 24, clip=clip)
    assert diff(big, make_model()) > 1e-2
    assert diff(big, acc) < 1e-13


def test_scheduler_steps_once_per_update():
    x, y = make_data(192)
    big, acc = make_model(), make_model()
    opt_big = torch.optim.Adam(big.parameters(), lr=1e-2)
    big_batch_loop(big, opt_big, x, y, 32, schedule=torch.optim.lr_scheduler.ExponentialLR(opt_big, 0.7))
    opt = GradientAccumulation(torch.optim.Adam(acc.parameters(), lr=1e-2), 4)
    accumulated_loop(acc, opt, x, y, 8, schedule=torch.optim.lr_scheduler.ExponentialLR(opt, 0.7))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.7**6, rel=1e-12)
    assert diff(big, acc) < 1e-12


def test_grad_scaler_loop_matches_the_big_batch_and_skips_a_cycle_with_inf():
    x, y = make_data(256)
    x[100] = float("inf")  # in the 4th batch of 32 (micro-batch 13 of 8): that update must be skipped
    big, acc = make_model(), make_model()

    def scaler():  # growth every 2 good updates, so the scale changes during the run
        return torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)

    s_big, s_acc = scaler(), scaler()
    big_batch_loop(big, torch.optim.Adam(big.parameters(), 1e-2), x, y, 32, clip=0.5, scaler=s_big)
    opt = GradientAccumulation(torch.optim.Adam(acc.parameters(), 1e-2), 4)
    accumulated_loop(acc, opt, x, y, 8, clip=0.5, scaler=s_acc)
    assert s_big.get_scale() == s_acc.get_scale() != 2.0**12
    assert all(s["step"].item() == 7 for s in opt.state.values())  # 8 cycles, one skipped
    assert torch.isfinite(next(acc.parameters())).all() and diff(big, acc) < 1e-12


def test_grad_scaler_without_unscale_is_unscaled_by_the_wrapper():
    x, y = make_data(128)
    big, acc = make_model(), make_model()
    s_big, s_acc = torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)
    s_big.scale(F.cross_entropy(big(x), y)).backward()
    opt_big = torch.optim.SGD(big.parameters(), lr=0.1)
    s_big.step(opt_big)
    opt = GradientAccumulation(torch.optim.SGD(acc.parameters(), lr=0.1), 4)
    for start in range(0, 128, 32):
        s_acc.scale(F.cross_entropy(acc(x[start:start + 32]), y[start:start + 32])).backward()
        s_acc.step(opt) if opt.sync_gradients else opt.step()
    assert diff(big, acc) < 1e-12


def test_grad_scaler_step_mid_cycle_is_refused():
    x, y = make_data(8)
    model = make_model()
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 4)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    with pytest.raises(RuntimeError, match="sync_gradients"):
        scaler.step(opt)


def test_checkpoint_mid_cycle_resumes_exactly(tmp_path):
    """state_dict() holds the partial sums: a fresh model and optimizer resume 2 micro-batches into a cycle."""
    x, y = make_data(128)
    model = make_model()
    opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-2), 4)
    run(model, opt, x[:48], y[:48], micro=8)  # 6 micro-batches: one update, 2 into the next cycle
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    run(model, opt, x[48:], y[48:], micro=8)

    saved = torch.load(tmp_path / "ckpt.pt")
    assert saved["opt"]["micro_step"] == 2 and len(saved["opt"]["partial"]) == 4
    resumed = make_model(seed=5)
    resumed.load_state_dict(saved["model"])
    resumed_opt = GradientAccumulation(torch.optim.Adam(resumed.parameters(), 1e-2), 4)
    resumed_opt.load_state_dict(saved["opt"])
    run(resumed, resumed_opt, x[48:], y[48:], micro=8)
    assert diff(model, resumed) == 0.0


def test_state_dict_at_a_boundary_has_no_partial_sums_and_clears_grads_on_load():
    x, y = make_data(32)
    model = make_model()
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 4)
    run(model, opt, x, y, micro=8)
    state = opt.state_dict()
    assert state["micro_step"] == 0 and state["partial"] == []
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.load_state_dict(state)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="partial"):
        opt.load_state_dict({**state, "micro_step": 2})


def test_lookahead_around_accumulation_is_refused_and_the_other_order_is_exact():
    from kexue.torch import Lookahead

    model = make_model()
    with pytest.raises(ValueError, match="outermost"):
        Lookahead(GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-2), 4), sync_period=2)
    x, y = make_data(256)
    big, acc = make_model(), make_model()
    run(big, Lookahead(torch.optim.Adam(big.parameters(), 1e-2), sync_period=3), x, y, micro=32)
    opt = GradientAccumulation(Lookahead(torch.optim.Adam(acc.parameters(), 1e-2), sync_period=3), 4)
    run(acc, opt, x, y, micro=8)
    assert opt.optimizer.inner_steps == 8
    assert diff(big, acc) < 1e-12


def test_a_newer_wrapper_takes_over_the_parameters():
    x, y = make_data(32)
    model, big = make_model(), make_model()
    GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 2)  # dropped at once
    keep = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 2)
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 4)  # this one scales by 1/4
    run(model, opt, x, y, micro=8)
    run(big, torch.optim.SGD(big.parameters(), lr=0.1), x, y, micro=32)
    assert keep.steps == 2 and diff(big, model) < 1e-14
    del keep, opt
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # no live wrapper: the gradient is the plain one
    F.cross_entropy(big(x), y).backward()
    assert max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), big.parameters())) < 1e-14


def test_parameters_unfrozen_after_construction_are_averaged():
    """Gradual unfreezing: a parameter frozen when the wrapper is built still gets its micro-gradients / n."""
    x, y = make_data(128)
    big, acc = make_model(), make_model()
    for model in (big, acc):
        for p in model[0].parameters():
            p.requires_grad_(False)
    opt_big = torch.optim.SGD(big.parameters(), lr=0.5)
    opt = GradientAccumulation(torch.optim.SGD(acc.parameters(), lr=0.5), 4)
    run(big, opt_big, x[:64], y[:64], micro=32)
    run(acc, opt, x[:64], y[:64], micro=8)
    frozen = [p.clone() for p in acc[0].parameters()]
    for model in (big, acc):
        for p in model[0].parameters():
            p.requires_grad_(True)
    run(big, opt_big, x[64:], y[64:], micro=32)
    run(acc, opt, x[64:], y[64:], micro=8)
    assert max((p - q).abs().max().item() for p, q in zip(acc[0].parameters(), frozen)) > 1e-3  # it trained
    assert diff(big, acc) < 1e-12


def test_optimizers_that_need_a_closure_are_refused():
    with pytest.raises(ValueError, match="`optimizer` is a LBFGS"):
        GradientAccumulation(torch.optim.LBFGS(make_model().parameters()), 2)


def test_load_state_dict_rejects_partial_sums_of_the_wrong_shape():
    x, y = make_data(8)
    model = make_model()
    opt = GradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.1), 4)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"`state_dict\['partial'\]\[0\]`"):
        opt.load_state_dict({**state, "partial": [torch.zeros(3)] * 4})
    opt.load_state_dict(state)
    assert opt.micro_step == 1
