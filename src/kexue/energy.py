"""Energy-based models: Langevin sampling, a replay buffer and maximum-likelihood training (chapter 06).

p(x) = exp(-U(x)) / Z. References: Y. Du and I. Mordatch, "Implicit Generation and Generalization in
Energy-Based Models", NeurIPS 2019; G. O. Roberts and R. L. Tweedie, "Exponential convergence of Langevin
distributions and their discrete approximations", Bernoulli 1996 (MALA); Su Jianlin,
"能量视角下的GAN模型(三):生成模型=能量模型", 2019-05-10, https://kexue.fm/archives/6612.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kexue._checks import fraction, positive_int

Energy = Callable[[torch.Tensor], torch.Tensor]


def _energy_and_grad(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = energy(x)
        if u.shape != (len(x),):
            raise ValueError(f"`energy` must map a batch of {len(x)} points to {len(x)} energies, got {tuple(u.shape)}")
        (grad,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), grad.detach()


def langevin(
    energy: Energy,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    noise_scale: float | None = None,
    metropolis: bool = False,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
    return_acceptance: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, float]:
    """Run ``steps`` Langevin steps x <- x - step_size * grad U(x) + noise_scale * N(0, I), eq. ``ula``.

    ``noise_scale=None`` is sqrt(2 * step_size), the Euler-Maruyama discretisation of the Langevin SDE whose
    stationary law is exp(-U). A smaller ``noise_scale`` samples exp(-U / T) with T = noise_scale^2 / (2 step_size)
    instead (eq. ``temperature``). ``metropolis=True`` adds the MALA accept/reject step (eq. ``mala``), which
    makes exp(-U) exactly stationary; it requires the default noise. ``grad_clip`` clips each point's gradient
    norm. Returns the final points (and, with ``return_acceptance``, MALA's mean acceptance rate).
    """
    steps = positive_int("steps", steps, minimum=0)
    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"`step_size` must be a positive number, got {step_size!r}")
    default_noise = math.sqrt(2 * step_size)
    if noise_scale is None:
        noise_scale = default_noise
    elif not (isinstance(noise_scale, (int, float)) and noise_scale >= 0):
        raise ValueError(f"`noise_scale` must be a non-negative number, got {noise_scale!r}")
    if metropolis and abs(noise_scale - default_noise) > 1e-12 * default_noise:
        raise ValueError("`metropolis=True` needs the default noise_scale = sqrt(2 * step_size)")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"`grad_clip` must be positive, got {grad_clip!r}")
    if not torch.is_floating_point(x0):
        raise TypeError("`x0` must be a floating-point tensor of points (batch first)")

    def clipped(g: torch.Tensor) -> torch.Tensor:
        if grad_clip is None:
            return g
        norms = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))
        return g * (grad_clip / norms).clamp(max=1.0)

    x = x0.detach().clone()
    u, grad = _energy_and_grad(energy, x)
    grad = clipped(grad)
    accepted = 0.0
    for _ in range(steps):
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        proposal = x - step_size * grad + noise_scale * noise
        u_new, grad_new = _energy_and_grad(energy, proposal)
        grad_new = clipped(grad_new)
        if not metropolis:
            x, u, grad = proposal, u_new, grad_new
            continue
        # eq. (mala): accept with probability min(1, p(x') q(x | x') / (p(x) q(x' | x))), with Gaussian q.
        forward = ((proposal - x + step_size * grad) ** 2).flatten(1).sum(1)
        backward = ((x - proposal + step_size * grad_new) ** 2).flatten(1).sum(1)
        log_ratio = -u_new + u - (backward - forward) / (4 * step_size)
        uniform = torch.rand(len(x), dtype=x.dtype, device=x.device, generator=generator)
        accept = torch.log(uniform) < log_ratio
        mask = accept.view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(mask, proposal, x)
        u = torch.where(accept, u_new, u)
        grad = torch.where(mask, grad_new, grad)
        accepted += accept.double().mean().item()
    if return_acceptance:
        return x, (accepted / steps if steps and metropolis else 1.0)
    return x


@dataclass
class ReplayBuffer:
    """Persistent chains for short-run Langevin: start most chains where earlier ones ended (eq. ``buffer``).

    ``sample(n)`` returns n starting points: each, with probability ``reinit``, fresh noise from ``init``,
    otherwise a stored point; ``push`` writes the chains' end points back into the slots they came from.
    """

    capacity: int
    init: Callable[[int], torch.Tensor]
    reinit: float = 0.05
    generator: torch.Generator | None = None
    points: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = positive_int("capacity", self.capacity)
        self.reinit = fraction("reinit", self.reinit, allow_zero=True)
        self.points = self.init(self.capacity)
        if len(self.points) != self.capacity:
            raise ValueError(f"`init(n)` must return n points, got {len(self.points)} for n = {self.capacity}")

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = positive_int("n", n)
        slots = torch.randint(0, self.capacity, (n,), generator=self.generator).to(self.points.device)
        x = self.points[slots].clone()
        fresh = torch.rand(n, generator=self.generator).to(self.points.device) < self.reinit
        if fresh.any():
            x[fresh] = self.init(int(fresh.sum())).to(x)
        return x, slots

    def push(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        self.points[slots] = x.detach().to(self.points)


def contrastive_loss(energy: Energy, data: torch.Tensor, samples: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """E_data[U] - E_model[U] + alpha (E_data[U^2] + E_model[U^2]), eqs. ``ml-gradient`` and ``regulariser``.

    Its gradient in the energy's parameters is the maximum-likelihood gradient (samples held fixed) plus
    Du and Mordatch's penalty that keeps the energies near zero.
    """
    u_data, u_model = energy(data), energy(samples.detach())
    return u_data.mean() - u_model.mean() + alpha * (u_data.pow(2).mean() + u_model.pow(2).mean())


def train_energy_model(
    model: nn.Module,
    data: torch.Tensor,
    iterations: int,
    batch_size: int = 128,
    buffer: ReplayBuffer | None = None,
    fresh_init: Callable[[int], torch.Tensor] | None = None,
    langevin_steps: int = 20,
    step_size: float = 0.01,
    noise_scale: float | None = 0.005,
    alpha: float = 0.1,
    lr: float = 1e-3,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Short-run Langevin maximum likelihood: model(x) is U(x); returns E_data[U] - E_model[U] per iteration.

    Negative samples start from ``buffer`` (persistent chains) or, without one, from ``fresh_init`` noise.
    The defaults decouple the noise from the step (eq. ``temperature``), as practical code does.
    """
    if (buffer is None) == (fresh_init is None):
        raise ValueError("give exactly one of `buffer` (persistent chains) and `fresh_init` (fresh noise)")
    iterations = positive_int("iterations", iterations)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
    gaps = []
    energy = lambda x: model(x).squeeze(-1)  # noqa: E731
    for _ in range(iterations):
        rows = torch.randint(0, len(data), (batch_size,), generator=generator).to(data.device)
        if buffer is not None:
            start, slots = buffer.sample(batch_size)
        else:
            start = fresh_init(batch_size)
        model.eval()
        samples = langevin(energy, start, langevin_steps, step_size, noise_scale, grad_clip=grad_clip,
                           generator=generator)
        model.train()
        if buffer is not None:
            buffer.push(samples, slots)
        loss = contrastive_loss(energy, data[rows], samples, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            gaps.append(float(energy(data[rows]).mean() - energy(samples).mean()))
    return gaps
