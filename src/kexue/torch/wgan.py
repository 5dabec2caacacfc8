"""A small WGAN toolkit (chapter 05): critic losses and three ways to keep the critic Lipschitz.

References: M. Arjovsky, S. Chintala, L. Bottou, "Wasserstein GAN", ICML 2017 (weight clipping);
I. Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017 (gradient penalty);
T. Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from kexue._checks import one_of, positive_int

VARIANTS = ("clip", "gp", "sn")


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(fake)] - E[D(real)]: minimising it maximises the dual objective of eq. ``kr`` over the critic D."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: the generator lowers the critic's estimate of W1 (its gradient is eq. ``envelope``'s)."""
    return -fake_scores.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(|grad D(x_hat)| - 1)^2] at random points x_hat on segments between real and fake samples, eq. ``gp``.

    The pairs (real[k], fake[k]) are independent draws, not pairs coupled by an optimal plan. ``generator`` (on
    the samples' device) draws the positions on the segments.
    """
    if real.shape != fake.shape:
        raise ValueError(f"`real` {tuple(real.shape)} and `fake` {tuple(fake.shape)} must have the same shape")
    t = torch.rand((len(real),) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device, generator=generator)
    points = (t * real + (1 - t) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(points).sum(), points, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, bound: float) -> None:
    """Clamp every parameter of ``module`` to [-bound, bound] in place (the original WGAN's constraint)."""
    if not bound > 0:
        raise ValueError(f"`bound` must be positive, got {bound!r}")
    for p in module.parameters():
        p.clamp_(-bound, bound)


def mlp_critic(dim: int, hidden: int = 128, spectral: bool = False) -> nn.Sequential:
    """A 3-layer ReLU MLP critic; with ``spectral`` every linear map is divided by an estimate of its spectral norm
    (eq. ``sn``): one power-iteration step per forward pass in training mode, none in eval mode."""
    wrap = spectral_norm if spectral else (lambda layer: layer)
    hidden = positive_int("hidden", hidden)
    return nn.Sequential(wrap(nn.Linear(positive_int("dim", dim), hidden)), nn.ReLU(),
                         wrap(nn.Linear(hidden, hidden)), nn.ReLU(), wrap(nn.Linear(hidden, 1)))


def mlp_generator(noise_dim: int, dim: int, hidden: int = 128) -> nn.Sequential:
    """A 3-layer ReLU MLP from ``noise_dim``-dimensional noise to ``dim``-dimensional samples."""
    hidden = positive_int("hidden", hidden)
    return nn.Sequential(nn.Linear(positive_int("noise_dim", noise_dim), hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, positive_int("dim", dim)))


def train_wgan(data: torch.Tensor, variant: str, iterations: int, n_critic: int = 5, batch_size: int = 256,
               noise_dim: int = 2, lr: float = 5e-4, clip: float = 0.05, gp_weight: float = 1.0,
               on_eval: Callable[[int, nn.Module, nn.Module], None] | None = None, eval_every: int = 50,
               seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Train a WGAN on ``data`` (n, dim) with the critic kept Lipschitz by ``variant`` in ``VARIANTS``.

    Each generator step follows ``n_critic`` critic steps on ``critic_loss`` (plus ``gp_weight`` times eq. ``gp``
    for "gp"; weights clamped to [-clip, clip] after each step for "clip"; eq. ``sn`` for "sn", with one power
    iteration per critic update: real and fake go through the critic in one batch, and the critic is in eval mode
    while the generator steps).

    ``on_eval(iteration, generator, critic)`` is called every ``eval_every`` generator iterations and at the end,
    with both networks in eval mode, so evaluation does not advance the power iteration: a run is the same whatever
    ``on_eval`` and ``eval_every`` are, as long as ``on_eval`` leaves the networks' parameters alone. ``seed``
    fixes the initialisation (drawn from a forked CPU RNG) and a private ``torch.Generator`` on ``data``'s device
    that draws every batch; the global RNG is neither seeded nor advanced. The networks are returned in eval mode.

    Defaults and the papers: for images the WGAN paper used RMSProp (lr 5e-5) with clipping at 0.01, WGAN-GP Adam
    (lr 1e-4, betas (0, 0.9)) with ``gp_weight`` 10, SN-GAN Adam (lr 1e-4 to 2e-4). For these 2-D toys WGAN-GP's
    released script (gan_toy.py: 8 Gaussians, 25 Gaussians, Swiss roll) uses 512-unit MLPs, batch 256, 5 critic
    steps, Adam (lr 1e-4, betas (0.5, 0.9)) with ``gp_weight`` 0.1, and RMSProp (lr 5e-5) with clipping at 0.01.
    Here all three variants share that Adam (betas (0.5, 0.9), batch 256, 5 critic steps) at lr 5e-4 so that only
    the Lipschitz constraint differs, with 128-unit MLPs, ``clip`` 0.05 and ``gp_weight`` 1 chosen for short runs.
    """
    one_of("variant", variant, VARIANTS)
    iterations, n_critic = positive_int("iterations", iterations), positive_int("n_critic", n_critic)
    batch_size, eval_every = positive_int("batch_size", batch_size), positive_int("eval_every", eval_every)
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or len(data) == 0:
        raise ValueError(f"`data` must be a non-empty (n, dim) tensor, got {getattr(data, 'shape', type(data))}")
    if not data.is_floating_point():
        raise TypeError(f"`data` must be a floating-point tensor, got {data.dtype}")
    if not bool(torch.isfinite(data).all()):  # one check before training, not a sync per step
        raise ValueError("`data` must be finite")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    for name, value in (("lr", lr), ("clip", clip), ("gp_weight", gp_weight)):
        if not value > 0:
            raise ValueError(f"`{name}` must be positive, got {value!r}")
    device, dim = data.device, data.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))  # CPU only, restored on exit
        gen, critic = mlp_generator(noise_dim, dim), mlp_critic(dim, spectral=variant == "sn")
    gen, critic = gen.to(device=device, dtype=data.dtype), critic.to(device=device, dtype=data.dtype)
    rng = torch.Generator(device=device).manual_seed(int(seed))
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))

    def noise() -> torch.Tensor:
        return torch.randn(batch_size, noise_dim, device=device, dtype=data.dtype, generator=rng)

    for it in range(iterations):
        gen.train()
        critic.train()
        for _ in range(n_critic):
            real = data[torch.randint(0, len(data), (batch_size,), device=device, generator=rng)]
            with torch.no_grad():
                fake = gen(noise())
            scores = critic(torch.cat([real, fake]))
            loss = critic_loss(scores[:batch_size], scores[batch_size:])
            if variant == "gp":
                loss = loss + gp_weight * gradient_penalty(critic, real, fake, generator=rng)
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
            if variant == "clip":
                clip_weights_(critic, clip)
        critic.eval()
        loss_g = generator_loss(critic(gen(noise())))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        opt_c.zero_grad(set_to_none=True)  # the generator step's gradients on the critic are not used
        if on_eval is not None and (it % eval_every == 0 or it == iterations - 1):
            gen.eval()
            on_eval(it, gen, critic)
    gen.eval()
    critic.eval()
    return gen, critic
