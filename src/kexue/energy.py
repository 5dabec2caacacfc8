"""Energy-based models: Langevin sampling, a replay buffer and maximum-likelihood training (chapter 06).

p(x) = exp(-U(x)) / Z. References: Y. Du and I. Mordatch, "Implicit Generation and Generalization in
Energy-Based Models", NeurIPS 2019; G. O. Roberts and R. L. Tweedie, "Exponential convergence of Langevin
distributions and their discrete approximations", Bernoulli 1996 (MALA); T. Tieleman, "Training restricted
Boltzmann machines using approximations to the likelihood gradient", ICML 2008 (persistent chains); Su Jianlin,
"能量视角下的GAN模型(三):生成模型=能量模型", 2019-05-10, https://kexue.fm/archives/6612.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kexue._checks import finite_real, fraction, positive_int

Energy = Callable[[torch.Tensor], torch.Tensor]


def _real(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A Python float from a positive (or non-negative) finite real: int, float, NumPy scalar, 0-d array or tensor."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        value = value.item()
    return finite_real(name, value, inclusive=allow_zero)


def _energy_and_grad(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = energy(x)
        if not isinstance(u, torch.Tensor) or u.shape != (len(x),):
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"`energy` must map a batch of {len(x)} points to {len(x)} energies, got {shape}")
        if not u.requires_grad:  # an energy that does not depend on x (a flat law) has zero gradient
            return u.detach(), torch.zeros_like(x).detach()
        (grad,) = torch.autograd.grad(u.sum(), x, allow_unused=True)
    return u.detach(), (torch.zeros_like(x) if grad is None else grad).detach()


def _per_point(t: torch.Tensor) -> torch.Tensor:
    """One row per point: (n, ...) -> (n, d); points may be scalars (x0 of shape (n,)) or arrays."""
    return t.reshape(len(t), -1)


def _chain(
    energy: Energy,
    x0: torch.Tensor,
    steps: Any,
    step_size: Any,
    noise_scale: Any,
    metropolis: bool,
    grad_clip: Any,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The points after ``steps`` steps and MALA's mean acceptance rate (a 0-d tensor; 1 without Metropolis)."""
    steps = positive_int("steps", steps, minimum=0)
    step_size = _real("step_size", step_size)
    default_noise = math.sqrt(2 * step_size)
    noise_scale = default_noise if noise_scale is None else _real("noise_scale", noise_scale, allow_zero=True)
    if metropolis and abs(noise_scale - default_noise) > 1e-12 * default_noise:
        raise ValueError("`metropolis=True` needs the default noise_scale = sqrt(2 * step_size)")
    if grad_clip is not None:
        grad_clip = _real("grad_clip", grad_clip)
    if not isinstance(x0, torch.Tensor) or not torch.is_floating_point(x0):
        raise TypeError("`x0` must be a floating-point tensor of points (batch first)")
    if x0.dim() == 0:
        raise ValueError("`x0` must hold a batch of points (batch first), got a 0-d tensor")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")

    def clipped(g: torch.Tensor) -> torch.Tensor:
        if grad_clip is None:
            return g
        norms = _per_point(g).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))
        return g * (grad_clip / norms).clamp(max=1.0)

    # a CPU generator draws on the CPU (then the draws move to x0's device); any other draws where x0 lives
    draw_on = torch.device("cpu") if generator is not None and generator.device.type == "cpu" else x0.device
    x = x0.detach().clone()
    u, grad = _energy_and_grad(energy, x)
    grad = clipped(grad)
    accepted = torch.zeros((), dtype=torch.float32, device=x.device)  # float32: MPS has no float64
    for _ in range(steps):
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator, device=draw_on).to(x.device)
        proposal = x - step_size * grad + noise_scale * noise
        u_new, grad_new = _energy_and_grad(energy, proposal)
        grad_new = clipped(grad_new)
        if not metropolis:
            x, u, grad = proposal, u_new, grad_new
            continue
        # eq. (mala): accept with probability min(1, p(x') q(x | x') / (p(x) q(x' | x))), with Gaussian q.
        forward = _per_point(proposal - x + step_size * grad).pow(2).sum(1)
        backward = _per_point(x - proposal + step_size * grad_new).pow(2).sum(1)
        log_ratio = -u_new + u - (backward - forward) / (4 * step_size)
        uniform = torch.rand(len(x), dtype=x.dtype, generator=generator, device=draw_on).to(x.device)
        accept = torch.log(uniform) < log_ratio
        mask = accept.view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(mask, proposal, x)
        u = torch.where(accept, u_new, u)
        grad = torch.where(mask, grad_new, grad)
        accepted = accepted + accept.float().mean()
    rate = accepted / steps if (steps and metropolis) else torch.ones((), dtype=torch.float32, device=x.device)
    return x, rate


def langevin(
    energy: Energy,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    noise_scale: float | None = None,
    metropolis: bool = False,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``steps`` Langevin steps x <- x - step_size * grad U(x) + noise_scale * N(0, I), eq. ``ula``.

    ``noise_scale=None`` is sqrt(2 * step_size), the Euler-Maruyama discretisation of the Langevin SDE
    (eq. ``langevin-sde``) whose stationary law is exp(-U). A smaller ``noise_scale`` targets exp(-U / T) with
    T = noise_scale^2 / (2 step_size) instead (eq. ``temperature``). ``metropolis=True`` adds the MALA
    accept/reject step (eq. ``mala``), which makes exp(-U) exactly stationary; it requires the default noise
    (use :func:`mala` to also get the acceptance rate). ``grad_clip`` clips each point's gradient norm (with
    Metropolis, in the proposal and in its reverse density alike, so the chain stays exact). ``step_size``,
    ``noise_scale`` and ``grad_clip`` may be Python or NumPy numbers or 0-d arrays/tensors. ``x0`` is a batch of
    points, batch first: shape (n,) for scalar points or (n, ...); ``energy`` maps it to n energies. Always
    returns the final points, a tensor like ``x0``. The random draws come from ``generator`` (CPU or on ``x0``'s device)
    or, without one, from torch's global generator.
    """
    return _chain(energy, x0, steps, step_size, noise_scale, metropolis, grad_clip, generator)[0]


def mala(
    energy: Energy,
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Metropolis-adjusted Langevin (eq. ``mala``): the final points and the mean acceptance rate over the steps.

    The same chain as ``langevin(..., metropolis=True)``; the rate is averaged over chains and steps.
    """
    x, rate = _chain(energy, x0, steps, step_size, None, True, grad_clip, generator)
    return x, float(rate)


@dataclass(eq=False)
class ReplayBuffer:
    """Persistent chains for short-run Langevin: start most chains where earlier ones ended (eq. ``buffer``).

    ``sample(n)`` draws n *distinct* slots (without replacement, so no two chains of a batch share a slot and
    none is lost on ``push``; hence n <= capacity) and returns their points, each replaced, with probability
    ``reinit``, by fresh noise from ``init``; ``push`` writes the chains' end points back into those slots.
    Buffers compare by identity (``eq=False``): a tensor field has no boolean ``==``.
    """

    capacity: int
    init: Callable[[int], torch.Tensor]
    reinit: float = 0.05
    generator: torch.Generator | None = None
    points: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.capacity = positive_int("capacity", self.capacity)
        self.reinit = fraction("reinit", self.reinit, allow_zero=True)
        if not callable(self.init):
            raise TypeError(f"`init` must be a callable n -> tensor of n points, got {type(self.init).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(self.generator).__name__}")
        self.points = self.init(self.capacity)
        if not isinstance(self.points, torch.Tensor) or self.points.dim() == 0 or len(self.points) != self.capacity:
            got = tuple(self.points.shape) if isinstance(self.points, torch.Tensor) else type(self.points).__name__
            raise ValueError(f"`init(n)` must return a tensor of n points, got {got} for n = {self.capacity}")

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n starting points from n distinct slots (``reinit`` of them fresh noise), and the slots."""
        n = positive_int("n", n)
        if n > self.capacity:
            raise ValueError(f"`n` must be at most the capacity {self.capacity} (slots are distinct), got {n}")
        device = self.points.device
        slots = torch.randperm(self.capacity, generator=self.generator)[:n].to(device)
        fresh = (torch.rand(n, generator=self.generator) < self.reinit).to(device)
        stored = self.points[slots]
        noise = self.init(n).to(stored)
        x = torch.where(fresh.view(-1, *([1] * (stored.dim() - 1))), noise, stored)
        return x, slots

    def push(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """Write the end points ``x`` back into ``slots`` (as returned by :meth:`sample`)."""
        if x.shape[1:] != self.points.shape[1:] or len(x) != len(slots):
            raise ValueError(f"`x` must hold one point of shape {tuple(self.points.shape[1:])} per slot")
        self.points[slots] = x.detach().to(self.points)


def _contrastive(u_data: torch.Tensor, u_model: torch.Tensor, alpha: float) -> torch.Tensor:
    return u_data.mean() - u_model.mean() + alpha * (u_data.pow(2).mean() + u_model.pow(2).mean())


def contrastive_loss(energy: Energy, data: torch.Tensor, samples: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """E_data[U] - E_model[U] + alpha (E_data[U^2] + E_model[U^2]), eqs. ``ml-gradient`` and ``regulariser``.

    Its gradient in the energy's parameters is the maximum-likelihood gradient (samples held fixed) plus
    Du and Mordatch's penalty 2 alpha (E_data[U grad U] + E_model[U grad U]), which moves the fixed point
    (eq. ``penalty-shift``).
    """
    alpha = _real("alpha", alpha, allow_zero=True)
    return _contrastive(energy(data), energy(samples.detach()), alpha)


def energy_mlp(dim: int, hidden: int = 128, depth: int = 2, spectral_norm: bool = False) -> nn.Sequential:
    """An MLP energy ``dim -> hidden (x depth) -> 1`` with SiLU activations (smooth, so grad_x U is continuous).

    ``spectral_norm=True`` wraps every linear layer in :func:`torch.nn.utils.parametrizations.spectral_norm`,
    as Du and Mordatch do, which bounds the energy's Lipschitz constant in x by 1.1^depth (SiLU's slope is at most 1.1).
    """
    dim, hidden, depth = positive_int("dim", dim), positive_int("hidden", hidden), positive_int("depth", depth)
    sizes = [dim] + [hidden] * depth + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        layers.append(nn.utils.parametrizations.spectral_norm(linear) if spectral_norm else linear)
        if i < depth:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


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
    """Short-run Langevin maximum likelihood (eqs. ``ml-gradient``, ``regulariser``): model(x) is U(x).

    Negative samples start from ``buffer`` (persistent chains, eq. ``buffer``) or, without one, from
    ``fresh_init`` noise. The defaults decouple the noise from the step (eq. ``temperature``), as practical code
    does. During sampling the parameters are frozen (no parameter gradients are built) and the model is in
    eval mode; one forward pass on data and samples together, in train mode, gives both the loss and the
    returned gap E_data[U] - E_model[U] of each iteration (before its update). The model is left in train mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module mapping points to energies, got {type(model).__name__}")
    if (buffer is None) == (fresh_init is None):
        raise ValueError("give exactly one of `buffer` (persistent chains) and `fresh_init` (fresh noise)")
    iterations = positive_int("iterations", iterations)
    batch_size = positive_int("batch_size", batch_size)
    alpha = _real("alpha", alpha, allow_zero=True)
    lr = _real("lr", lr)
    if not isinstance(data, torch.Tensor) or not torch.is_floating_point(data):
        raise TypeError("`data` must be a floating-point tensor (batch first)")
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
    params = [p for p in model.parameters() if p.requires_grad]
    gaps = torch.zeros(iterations, dtype=torch.float32, device=data.device)  # float32: MPS has no float64
    energy = lambda x: model(x).squeeze(-1)  # noqa: E731
    for i in range(iterations):
        rows = torch.randint(0, len(data), (batch_size,), generator=generator).to(data.device)
        if buffer is not None:
            start, slots = buffer.sample(batch_size)
        else:
            start = fresh_init(batch_size)
        model.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            samples = langevin(energy, start, langevin_steps, step_size, noise_scale, grad_clip=grad_clip,
                               generator=generator)
        finally:
            for p in params:
                p.requires_grad_(True)
        model.train()
        if buffer is not None:
            buffer.push(samples, slots)
        u = energy(torch.cat([data[rows], samples.to(data)]))
        u_data, u_model = u[:batch_size], u[batch_size:]
        loss = _contrastive(u_data, u_model, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gaps[i] = (u_data.mean() - u_model.mean()).detach()
    return gaps.tolist()
