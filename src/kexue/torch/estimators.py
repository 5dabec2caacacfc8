"""Monte Carlo gradient estimators for E_{z ~ p_theta}[f(z)] (chapter 07).

References: D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (reparameterization);
R. J. Williams, "Simple statistical gradient-following algorithms", Machine Learning 8, 1992 (score function);
Su Jianlin, https://kexue.fm/archives/6705.
"""

from __future__ import annotations

import torch


def normal_rsample(mu: torch.Tensor, sigma: torch.Tensor, n: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I), eq. ``normal-reparam``: differentiable in mu and sigma.

    With ``n`` the result has a leading dimension of ``n`` independent samples.
    """
    mu, sigma = torch.as_tensor(mu), torch.as_tensor(sigma)
    if not torch.is_floating_point(mu) or not torch.is_floating_point(sigma):
        raise TypeError("`mu` and `sigma` must be floating-point tensors")
    if (sigma.detach() < 0).any() or torch.isnan(sigma).any():
        raise ValueError("`sigma` must be non-negative")
    shape = torch.broadcast_shapes(mu.shape, sigma.shape)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive integer, got {n!r}")
        shape = (n, *shape)
    eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + sigma * eps


def score_function_surrogate(log_prob: torch.Tensor, f_values: torch.Tensor,
                             baseline: torch.Tensor | float | None = None) -> torch.Tensor:
    """A scalar whose gradient is the score-function (REINFORCE) estimate, eq. ``score-function``.

    mean_n[(f(z_n) - b) * grad log p(z_n)], with f and b held constant (detached). ``log_prob`` and
    ``f_values`` hold one entry per sample; the baseline b may be a number or a tensor per sample, and
    must not depend on z_n for the estimate to stay unbiased.
    """
    if log_prob.shape != f_values.shape:
        raise ValueError(f"`log_prob` {tuple(log_prob.shape)} and `f_values` {tuple(f_values.shape)} must match")
    weight = f_values.detach()
    if baseline is not None:
        weight = weight - torch.as_tensor(baseline, dtype=weight.dtype, device=weight.device).detach()
    return (weight * log_prob).mean()
