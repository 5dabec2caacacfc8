"""A small WGAN toolkit (chapter 05): critic losses and three ways to keep the critic Lipschitz.

References: M. Arjovsky, S. Chintala, L. Bottou, "Wasserstein GAN", ICML 2017 (weight clipping);
I. Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017 (gradient penalty);
T. Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
"""

from __future__ import annotations

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
    """-E[D(G(z))]: the generator lowers the critic's estimate of W1."""
    return -fake_scores.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(|grad D(x_hat)| - 1)^2] at random points x_hat on segments between real and fake samples, eq. ``gp``."""
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
    """A 3-layer MLP critic; with ``spectral`` every linear map is divided by its spectral norm (eq. ``sn``)."""
    wrap = spectral_norm if spectral else (lambda layer: layer)
    return nn.Sequential(wrap(nn.Linear(positive_int("dim", dim), hidden)), nn.ReLU(),
                         wrap(nn.Linear(hidden, hidden)), nn.ReLU(), wrap(nn.Linear(hidden, 1)))


def mlp_generator(noise_dim: int, dim: int, hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(positive_int("noise_dim", noise_dim), hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, positive_int("dim", dim)))


def train_wgan(data: torch.Tensor, variant: str, iterations: int, n_critic: int = 5, batch_size: int = 256,
               noise_dim: int = 2, lr: float = 5e-4, clip: float = 0.05, gp_weight: float = 1.0,
               on_eval: Callable[[int, nn.Module, nn.Module], None] | None = None, eval_every: int = 50,
               seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Train a WGAN on ``data`` (n, dim) with the critic kept Lipschitz by ``variant`` in ``VARIANTS``.

    ``on_eval(iteration, generator, critic)`` is called every ``eval_every`` generator iterations and at the end.
    """
    one_of("variant", variant, VARIANTS)
    iterations, n_critic = positive_int("iterations", iterations), positive_int("n_critic", n_critic)
    torch.manual_seed(seed)
    dim = data.shape[1]
    gen, critic = mlp_generator(noise_dim, dim).to(data.device), mlp_critic(dim, spectral=variant == "sn").to(data.device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    for it in range(iterations):
        for _ in range(n_critic):
            real = data[torch.randint(0, len(data), (batch_size,), device=data.device)]
            fake = gen(torch.randn(batch_size, noise_dim, device=data.device)).detach()
            loss = critic_loss(critic(real), critic(fake))
            if variant == "gp":
                loss = loss + gp_weight * gradient_penalty(critic, real, fake)
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
            if variant == "clip":
                clip_weights_(critic, clip)
        loss_g = generator_loss(critic(gen(torch.randn(batch_size, noise_dim, device=data.device))))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if on_eval is not None and (it % eval_every == 0 or it == iterations - 1):
            on_eval(it, gen, critic)
    return gen, critic
