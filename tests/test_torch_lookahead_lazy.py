"""kexue.torch.Lookahead and kexue.torch.LazyAdam against references and torch's conventions."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.lookahead import (lookahead_contraction, lookahead_sgd_reference, lookahead_steady_variance,
                             noisy_quadratic_floor, noisy_quadratic_loss_curve, sgd_steady_variance)
from kexue.torch import LazyAdam, Lookahead


def least_squares(seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((30, 6)), rng.standard_normal(30)
    return a, b, rng.standard_normal(6)


def test_lookahead_matches_the_numpy_reference():
    a, b, w0 = least_squares()
    theta_ref, phi_ref = lookahead_sgd_reference(w0, lambda w, t: a.T @ (a @ w - b) / len(b), 0.05, 37, 4, 0.3)
    w = nn.Parameter(torch.tensor(w0))
    opt = Lookahead(torch.optim.SGD([w], lr=0.05), sync_period=4, slow_step_size=0.3)
    for _ in range(37):
        w.grad = torch.tensor(a.T @ (a @ w.detach().numpy() - b) / len(b))
        opt.step()
    assert np.abs(w.detach().numpy() - theta_ref).max() < 1e-12
    assert np.abs(opt.slow_weights()[0].numpy() - phi_ref).max() < 1e-12


def model_and_data(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(160, 5, dtype=torch.float64), torch.randint(0, 3, (160,))
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double(), x, y


def train(model, opt, x, y, start=0, stop=None):
    for k in range(start, stop if stop is not None else len(x) // 8):
        F.cross_entropy(model(x[8 * k:8 * k + 8]), y[8 * k:8 * k + 8]).backward()
        opt.step()
        opt.zero_grad()


def test_sync_every_step_with_alpha_one_is_the_inner_optimizer():
    model, x, y = model_and_data()
    twin = copy.deepcopy(model)
    train(model, torch.optim.Adam(model.parameters(), 1e-2), x, y)
    train(twin, Lookahead(torch.optim.Adam(twin.parameters(), 1e-2), 1, 1.0), x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_checkpoint_between_synchronisations_resumes_exactly():
    model, x, y = model_and_data()
    opt = Lookahead(torch.optim.Adam(model.parameters(), 1e-2), 5, 0.5)
    train(model, opt, x, y, 0, 7)  # two inner steps past a synchronisation
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, x, y, 7, 20)

    clone, _, _ = model_and_data(seed=1)
    clone.load_state_dict(saved_model)
    clone_opt = Lookahead(torch.optim.Adam(clone.parameters(), 1e-2), 5, 0.5)
    clone_opt.load_state_dict(saved_state)
    train(clone, clone_opt, x, y, 7, 20)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), clone.parameters()))
    assert clone_opt.inner_steps == 20


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_lookahead_schedulers_and_bad_arguments():
    model, x, y = model_and_data()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=1.0))
    torch.optim.lr_scheduler.StepLR(opt, 1, 0.1).step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    for kwargs, error in [({"sync_period": 0}, ValueError), ({"sync_period": 2.0}, TypeError),
                          ({"slow_step_size": 0.0}, ValueError), ({"slow_step_size": 1.5}, ValueError),
                          ({"slow_step_size": "half"}, TypeError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    with pytest.raises(ValueError, match="sync_period=5"):
        Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), 3).load_state_dict(opt.state_dict())


def test_swapped_puts_the_slow_weights_in_and_restores_the_fast_ones():
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), sync_period=4, slow_step_size=0.5)
    with opt.swapped():  # before the first step the slow weights are the weights
        assert w.item() == 0.0
    for _ in range(6):  # gradient -1: the fast weight climbs by 1 a step; sync after step 4: slow 0 -> 2
        w.grad = -torch.ones(1, dtype=torch.float64)
        opt.step()
    assert w.item() == 4.0 and opt.slow_weights()[0].item() == 2.0
    with opt.swapped():
        assert w.item() == 2.0
    assert w.item() == 4.0
    with pytest.raises(RuntimeError, match="inside"), opt.swapped():
        raise RuntimeError("inside")
    assert w.item() == 4.0  # restored on an exception too


def test_lookahead_survives_deepcopy_pickle_and_torch_save(tmp_path):
    """A copy mid-round carries the slow weights and the step count, and keeps stepping like the original."""
    import io
    import pickle

    model, x, y = model_and_data()
    opt = Lookahead(torch.optim.Adam(model.parameters(), 1e-2), 5, 0.5)
    train(model, opt, x, y, 0, 7)  # two inner steps past a synchronisation
    buffer = io.BytesIO()
    torch.save({"model": model, "opt": opt}, buffer)
    copies = [copy.deepcopy({"model": model, "opt": opt}), pickle.loads(pickle.dumps({"model": model, "opt": opt})),
              torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)]
    train(model, opt, x, y, 7, 20)
    for c in copies:
        assert c["opt"].inner_steps == 7 and c["opt"].optimizer.param_groups[0]["params"][0] is next(c["model"].parameters())
        train(c["model"], c["opt"], x, y, 7, 20)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), c["model"].parameters()))
        assert all(torch.equal(p, q) for p, q in zip(opt.slow_weights(), c["opt"].slow_weights()))


def test_steady_state_variance_formula_is_below_sgd():
    for lr in (0.05, 0.5, 1.5):
        v_sgd = sgd_steady_variance(lr, 1.0, 1.0)
        assert 0 < lookahead_steady_variance(lr, 1.0, 1.0, 5, 0.5) < v_sgd
    assert lookahead_steady_variance(0.1, 1.0, 1.0, 5, 1.0) == pytest.approx(sgd_steady_variance(0.1, 1.0, 1.0))
    with pytest.raises(ValueError, match="diverges"):
        sgd_steady_variance(2.5, 1.0, 1.0)


def test_noisy_quadratic_curve_is_the_round_recursion_and_tends_to_the_floor():
    h = np.geomspace(1.0, 0.01, 7)
    s2, x0, lr, k, alpha = 1.0 / h, 1.0 / np.sqrt(h), 0.3, 5, 0.6
    beta = 1 - lr * h
    r = np.array([lookahead_contraction(lr, a, k, alpha) for a in h])
    noise = alpha**2 * lr**2 * h**2 * s2 * (1 - beta ** (2 * k)) / (1 - beta**2)  # eq. inner-round
    mean, var, expected = x0.copy(), np.zeros_like(h), []
    for _ in range(50):
        mean, var = r * mean, r * r * var + noise
        expected.append(0.5 * np.sum(h * (mean**2 + var)))
    assert np.allclose(noisy_quadratic_loss_curve(h, s2, x0, lr, 50, k, alpha), expected, rtol=1e-12)
    long = noisy_quadratic_loss_curve(h, s2, np.zeros_like(h), lr, 20_000, k, alpha)[-1]
    assert long == pytest.approx(noisy_quadratic_floor(h, s2, lr, k, alpha), rel=1e-9)
    single = [lookahead_steady_variance(lr, a, b, k, alpha) for a, b in zip(h, s2)]
    assert noisy_quadratic_floor(h, s2, lr, k, alpha) == pytest.approx(0.5 * np.sum(h * single), rel=1e-12)
    with pytest.raises(ValueError, match="diverges"):
        noisy_quadratic_floor(h, s2, 2.5, k, alpha)


def embedding_run(opt_class, sparse, steps=40, **kwargs):
    torch.manual_seed(0)
    emb = nn.Embedding(500, 6, sparse=sparse)
    opt = opt_class(emb.parameters(), lr=1e-2, **kwargs)
    ids = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(0, 60, (24,), generator=ids)  # rows 60.. are never touched
        emb(batch).sin().sum().backward()
        opt.step()
        opt.zero_grad()
    return emb.weight.detach(), opt


def test_lazy_adam_is_sparse_adam_bit_for_bit():
    reference, _ = embedding_run(torch.optim.SparseAdam, sparse=True)
    lazy_sparse, opt = embedding_run(LazyAdam, sparse=True)
    lazy_dense, _ = embedding_run(LazyAdam, sparse=False)
    assert torch.equal(reference, lazy_sparse) and torch.equal(reference, lazy_dense)
    torch.manual_seed(0)
    initial = nn.Embedding(500, 6).weight.detach()
    assert torch.equal(lazy_sparse[60:], initial[60:])  # untouched rows: bit-for-bit unchanged
    assert torch.count_nonzero(opt.state[next(iter(opt.state))]["exp_avg"][60:]) == 0


def test_dense_adam_moves_absent_rows_but_lazy_adam_does_not():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3)
    for opt, moves in ((torch.optim.Adam(emb.parameters(), 0.1), True), (LazyAdam(emb.parameters(), 0.1), False)):
        emb(torch.tensor([0, 1])).sum().backward()
        opt.step()
        opt.zero_grad()
        before = emb.weight.detach().clone()
        emb(torch.tensor([1])).sum().backward()  # row 0 is absent now
        opt.step()
        opt.zero_grad()
        assert (not torch.equal(emb.weight[0], before[0])) is moves


def test_lazy_adam_refuses_sparse_and_complex_parameters():
    with pytest.raises(ValueError, match="layout"):
        LazyAdam([nn.Parameter(torch.zeros(3, 3).to_sparse())])
    with pytest.raises(ValueError, match="complex"):
        LazyAdam([nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    opt = LazyAdam([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3, dtype=torch.complex64))]})


@pytest.mark.parametrize("kwargs, match", [({"lr": 0}, "lr"), ({"lr": "1"}, "lr"), ({"betas": (0.9,)}, "betas"),
                                            ({"betas": (0.9, 1.0)}, "betas"), ({"eps": -1}, "eps")])
def test_lazy_adam_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LazyAdam(nn.Linear(2, 2).parameters(), **kwargs)
