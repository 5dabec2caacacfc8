"""kexue.energy: Langevin, MALA, the replay buffer and the contrastive loss (chapter 06)."""

import math

import pytest
import torch
from torch import nn

from kexue.energy import ReplayBuffer, contrastive_loss, langevin, train_energy_model


def gaussian_energy(x):
    return 0.5 * (x**2).sum(1)


def test_ula_variance_has_the_predicted_bias_and_mala_removes_it():
    h = 0.5
    gen = torch.Generator().manual_seed(0)
    x = langevin(gaussian_energy, torch.zeros(100_000, 1, dtype=torch.float64), 100, h, generator=gen)
    assert x.var().item() == pytest.approx(1 / (1 - h / 2), rel=0.02)
    xm, acceptance = langevin(gaussian_energy, torch.zeros(100_000, 1, dtype=torch.float64), 100, h,
                              metropolis=True, generator=gen, return_acceptance=True)
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


def test_training_runs_and_separates_data_from_samples():
    torch.manual_seed(0)
    data = torch.randn(512, 2) * 0.3 + 1.0
    model = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))
    init = lambda n: torch.rand(n, 2) * 4 - 2  # noqa: E731
    gaps = train_energy_model(model, data, 60, batch_size=64, buffer=ReplayBuffer(256, init), langevin_steps=5)
    assert len(gaps) == 60 and all(math.isfinite(g) for g in gaps)
    with pytest.raises(ValueError, match="exactly one"):
        train_energy_model(model, data, 1)
