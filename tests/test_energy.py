"""kexue.energy: Langevin, MALA, the replay buffer and the contrastive loss (chapter 06)."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from kexue.energy import ReplayBuffer, contrastive_loss, energy_mlp, langevin, mala, train_energy_model


def gaussian_energy(x):
    return 0.5 * (x**2).sum(1)


def test_ula_variance_has_the_predicted_bias_and_mala_removes_it():
    h = 0.5
    gen = torch.Generator().manual_seed(0)
    x = langevin(gaussian_energy, torch.zeros(100_000, 1, dtype=torch.float64), 100, h, generator=gen)
    assert x.var().item() == pytest.approx(1 / (1 - h / 2), rel=0.02)
    xm, acceptance = mala(gaussian_energy, torch.zeros(100_000, 1, dtype=torch.float64), 100, h, generator=gen)
    assert xm.var().item() == pytest.approx(1.0, rel=0.02) and 0.5 < acceptance < 1


def test_decoupled_noise_samples_a_colder_law():
    h, sigma = 0.01, 0.05  # T = sigma^2 / (2 h) = 0.125
    x = langevin(gaussian_energy, torch.zeros(50_000, 1, dtype=torch.float64), 1500, h, noise_scale=sigma,
                 generator=torch.Generator().manual_seed(1))
    temperature = sigma**2 / (2 * h)
    assert x.var().item() == pytest.approx(temperature / (1 - h / 2), rel=0.03)


def test_bad_arguments():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="step_size"):
        langevin(gaussian_energy, x, 1, 0.0)
    with pytest.raises(ValueError, match="metropolis"):
        langevin(gaussian_energy, x, 1, 0.1, noise_scale=0.01, metropolis=True)
    with pytest.raises(ValueError, match="energies"):
        langevin(lambda z: z.sum(), x, 1, 0.1)
    with pytest.raises(TypeError, match="x0"):
        langevin(gaussian_energy, torch.zeros(4, 2, dtype=torch.long), 1, 0.1)
    with pytest.raises(ValueError, match="reinit"):
        ReplayBuffer(10, lambda n: torch.zeros(n, 2), reinit=2.0)


def test_grad_clip_bounds_each_step():
    x0 = torch.full((3, 2), 100.0, dtype=torch.float64)
    x = langevin(gaussian_energy, x0, 1, 0.1, noise_scale=0.0, grad_clip=1.0)
    assert torch.allclose((x0 - x).norm(dim=1), torch.full((3,), 0.1, dtype=torch.float64))


def test_replay_buffer_round_trip():
    gen = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(50, lambda n: torch.zeros(n, 2), reinit=0.0, generator=gen)
    x, slots = buffer.sample(8)
    buffer.push(x + 1, slots)
    assert torch.equal(buffer.points[slots], x + 1)
    assert (buffer.points.sum(1) > 0).sum() == len(slots.unique())


def test_contrastive_gradient_is_the_likelihood_gradient_for_a_gaussian():
    # U(x) = lam x^2 / 2, Z = sqrt(2 pi / lam): d/dlam E_data[-log p] = E_data[x^2 / 2] - 1 / (2 lam)
    lam = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    data = torch.randn(200_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.8
    samples = torch.randn(200_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) / math.sqrt(2.0)
    contrastive_loss(lambda x: lam * 0.5 * (x**2).sum(1), data, samples).backward()
    exact = (0.5 * data**2).mean().item() - 1 / (2 * 2.0)
    assert lam.grad.item() == pytest.approx(exact, abs=5e-3)


def test_contrastive_loss_value_with_the_penalty():
    # U(x) = x: data energies 1 and 2, sample energy 3, so (regulariser) = 1.5 - 3 + alpha (2.5 + 9)
    loss = contrastive_loss(lambda x: x[:, 0], torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0]]), alpha=0.2)
    assert loss.item() == pytest.approx(1.5 - 3 + 0.2 * (2.5 + 9))


def test_training_runs_and_returns_one_finite_gap_per_iteration():
    torch.manual_seed(0)
    data = torch.randn(512, 2) * 0.3 + 1.0
    model = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))
    init = lambda n: torch.rand(n, 2) * 4 - 2  # noqa: E731
    gaps = train_energy_model(model, data, 60, batch_size=64, buffer=ReplayBuffer(256, init), langevin_steps=5)
    assert len(gaps) == 60 and all(math.isfinite(g) for g in gaps)
    with pytest.raises(ValueError, match="exactly one"):
        train_energy_model(model, data, 1)


def test_step_sizes_may_be_numpy_or_0d_and_the_return_type_is_fixed():
    x0 = torch.ones(5, 2, dtype=torch.float64)
    ref = langevin(gaussian_energy, x0, 3, 0.1, noise_scale=0.0)
    for h in (np.float32(0.1), np.float64(0.1), np.array(0.1), torch.tensor(0.1, dtype=torch.float64)):
        out = langevin(gaussian_energy, x0, 3, h, noise_scale=np.float32(0.0))
        assert isinstance(out, torch.Tensor) and torch.allclose(out, ref)
    assert isinstance(langevin(gaussian_energy, x0, 3, 0.1, metropolis=True), torch.Tensor)
    x, rate = mala(gaussian_energy, x0, 3, np.float32(0.1))
    assert isinstance(x, torch.Tensor) and isinstance(rate, float) and 0 <= rate <= 1
    with pytest.raises(TypeError, match="step_size"):
        langevin(gaussian_energy, x0, 3, np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="noise_scale"):
        langevin(gaussian_energy, x0, 3, 0.1, noise_scale=-1.0)


def test_replay_buffer_compares_by_identity_and_draws_distinct_slots():
    gen = torch.Generator().manual_seed(0)
    zeros = lambda n: torch.zeros(n, 2)  # noqa: E731
    buffer = ReplayBuffer(16, zeros, reinit=0.0, generator=gen)
    assert buffer == buffer and buffer != ReplayBuffer(16, zeros, reinit=0.0, generator=gen)  # no tensor ==
    for _ in range(20):  # with replacement, 16 draws out of 16 slots repeat a slot with probability 1 - 16!/16^16
        _, slots = buffer.sample(16)
        assert len(slots.unique()) == 16
    x, slots = buffer.sample(16)
    buffer.push(x + torch.arange(16.0)[:, None] + 1, slots)  # every chain survives the push
    assert sorted(buffer.points[:, 0].tolist()) == [float(k) for k in range(1, 17)]
    with pytest.raises(ValueError, match="`n`"):
        buffer.sample(17)


def test_replay_buffer_reinitialises_the_stated_fraction():
    buffer = ReplayBuffer(4000, lambda n: torch.ones(n, 3), reinit=0.25, generator=torch.Generator().manual_seed(1))
    buffer.points.zero_()
    x, _ = buffer.sample(4000)
    fresh = x[:, 0] == 1
    assert torch.equal(x[fresh], torch.ones(int(fresh.sum()), 3))
    assert abs(fresh.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)


def test_training_evaluates_the_energy_once_per_iteration_and_freezes_parameters_while_sampling():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))
    calls = {"forward": 0, "grad_during_sampling": 0}
    sampling = {"on": False}

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            if x.requires_grad and any(p.requires_grad for p in self.parameters()) and not self.training:
                calls["grad_during_sampling"] += 1
            if self.training:
                calls["forward"] += 1
            return self.net(x)

    model = Counting()
    train_energy_model(model, torch.randn(64, 2), 7, batch_size=16, fresh_init=lambda n: torch.randn(n, 2),
                       langevin_steps=3)
    assert calls["forward"] == 7 and calls["grad_during_sampling"] == 0
    assert all(p.requires_grad for p in model.parameters())


def test_energy_mlp_shapes_and_spectral_norm():
    torch.manual_seed(0)
    plain, normed = energy_mlp(3, 8), energy_mlp(3, 8, spectral_norm=True)
    assert plain(torch.randn(5, 3)).shape == (5, 1) and normed(torch.randn(5, 3)).shape == (5, 1)
    assert [type(m).__name__ for m in plain] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    normed.train()
    for _ in range(50):  # power iteration converges in train mode
        normed(torch.randn(5, 3))
    for layer in normed[::2]:
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(TypeError, match="hidden"):
        energy_mlp(3, 8.0)


def test_one_iteration_runs_the_stated_sampler_and_the_stated_update():
    # Everything deterministic: noise_scale=0, reinit=0, all slots drawn, every data row the same point.
    # Then the buffer after one iteration must hold langevin(U_before, start) and the parameters must have
    # taken one Adam step on contrastive_loss(U_before, data, samples, alpha).
    torch.manual_seed(0)
    model = energy_mlp(2, 16)
    before = copy.deepcopy(model)
    start = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    buffer = ReplayBuffer(32, lambda n: start.clone() if n == 32 else torch.zeros(n, 2), reinit=0.0,
                          generator=torch.Generator().manual_seed(2))
    data = torch.tensor([[0.5, -0.25]]).repeat(10, 1)
    energy_before = lambda x: before(x).squeeze(-1)  # noqa: E731
    gaps = train_energy_model(model, data, 1, batch_size=32, buffer=buffer, langevin_steps=4, step_size=0.1,
                              noise_scale=0.0, alpha=0.3, lr=1e-2, generator=torch.Generator().manual_seed(3))
    samples = langevin(energy_before, start, 4, 0.1, noise_scale=0.0)
    assert torch.allclose(buffer.points, samples, atol=1e-6)  # the chains ran as stated and were pushed back
    with torch.no_grad():
        gap = energy_before(data).mean() - energy_before(samples).mean()
    assert gaps[0] == pytest.approx(gap.item(), abs=1e-5)
    opt = torch.optim.Adam(before.parameters(), lr=1e-2, betas=(0.0, 0.999))
    contrastive_loss(energy_before, data[:1].repeat(32, 1), samples, alpha=0.3).backward()
    opt.step()
    for p, q in zip(model.parameters(), before.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_points_may_be_scalars_and_x0_must_be_a_batch():
    energy_1d = lambda x: 0.5 * x**2  # noqa: E731  (n,) -> (n,)
    x0 = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for clip in (None, 0.5):
        x, rate = mala(energy_1d, x0, 5, 0.3, grad_clip=clip, generator=torch.Generator().manual_seed(0))
        x2, rate2 = mala(gaussian_energy, x0[:, None], 5, 0.3, grad_clip=clip, generator=torch.Generator().manual_seed(0))
        assert x.shape == x0.shape and torch.allclose(x, x2[:, 0]) and rate == rate2
    with pytest.raises(ValueError, match="x0"):
        langevin(energy_1d, torch.tensor(1.0), 1, 0.1)
    with pytest.raises(TypeError, match="generator"):
        langevin(energy_1d, x0, 1, 0.1, generator=0)


def test_a_flat_energy_gives_brownian_motion():
    # U constant: no drift, so after k steps of noise sqrt(2h) the variance is 2 h k (relative SE sqrt(2/n))
    x = langevin(lambda z: torch.zeros(len(z)), torch.zeros(40_000, 1, dtype=torch.float64), 5, 0.1,
                 generator=torch.Generator().manual_seed(4))
    assert abs(x.var().item() / (2 * 0.1 * 5) - 1) < 4 * math.sqrt(2 / 40_000)
    assert x.mean().abs().item() < 4 * math.sqrt(2 * 0.1 * 5 / 40_000)  # and no drift


def test_mala_with_clipped_gradients_stays_exact():
    # clipping changes the proposal; the reverse density must use the same clipped drift or exp(-U) is lost
    n = 100_000
    x, rate = mala(gaussian_energy, torch.zeros(n, 1, dtype=torch.float64), 300, 1.0, grad_clip=0.3,
                   generator=torch.Generator().manual_seed(5))
    assert abs(x.var().item() - 1) < 4 * math.sqrt(2 / n) and 0.3 < rate < 1


def test_bad_arguments_of_the_buffer_and_the_trainer():
    with pytest.raises(ValueError, match="init"):
        ReplayBuffer(5, lambda n: 0.0)
    with pytest.raises(TypeError, match="init"):
        ReplayBuffer(5, torch.zeros(5, 2))
    with pytest.raises(TypeError, match="generator"):
        ReplayBuffer(5, lambda n: torch.zeros(n, 2), generator=1)
    assert "points" not in repr(ReplayBuffer(5, lambda n: torch.zeros(n, 2)))
    data, init = torch.randn(8, 2), (lambda n: torch.randn(n, 2))  # noqa: E731
    with pytest.raises(TypeError, match="model"):
        train_energy_model(lambda x: x.sum(1), data, 1, batch_size=4, fresh_init=init)
    with pytest.raises(ValueError, match="lr"):
        train_energy_model(energy_mlp(2, 4), data, 1, batch_size=4, fresh_init=init, lr=0.0)
