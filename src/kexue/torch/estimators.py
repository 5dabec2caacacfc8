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

    With ``n`` the result has a leading dimension of ``n`` independent samples. Autograd through f(z) then
    gives the pathwise gradient, eq. ``reparam-grad``, which is unbiased when f(mu + sigma * eps) is
    continuous in (mu, sigma) and differentiable almost everywhere (a step function f gives 0, wrongly).
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
    """A scalar whose gradient is the score-function (REINFORCE) estimate, eqs. ``score-function``, ``baseline``.

    mean_n[(f(z_n) - b_n) * grad log p(z_n)], with f and b held constant (detached). ``log_prob`` and
    ``f_values`` hold one entry per sample; the baseline may be a number or a tensor per sample. It stays
    unbiased when b_n does not depend on z_n (it may depend on the other samples, as in
    :func:`leave_one_out_baseline`), when the support of p_theta does not depend on theta, and when
    gradient and expectation may be swapped.
    """
    if not isinstance(log_prob, torch.Tensor) or not isinstance(f_values, torch.Tensor):
        raise TypeError("`log_prob` and `f_values` must be torch.Tensors")
    if log_prob.shape != f_values.shape:
        raise ValueError(f"`log_prob` {tuple(log_prob.shape)} and `f_values` {tuple(f_values.shape)} must match")
    weight = f_values.detach()
    if baseline is not None:
        weight = weight - torch.as_tensor(baseline, dtype=weight.dtype, device=weight.device).detach()
    return (weight * log_prob).mean()


def leave_one_out_baseline(f_values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """b_s = mean of f over the other samples along ``dim``, eq. ``leave-one-out``: a baseline per sample.

    With S >= 2 independent samples z_1..z_S of the same distribution, b_s depends only on the samples other
    than z_s, so (f(z_s) - b_s) grad log p(z_s) stays unbiased (the REINFORCE-leave-one-out / VIMCO-style
    baseline of Kool et al. 2019 and Mnih and Rezende 2016). Returned detached.
    """
    if not isinstance(f_values, torch.Tensor) or not torch.is_floating_point(f_values):
        raise TypeError("`f_values` must be a floating-point torch.Tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -f_values.dim() <= dim < f_values.dim():
        raise ValueError(f"`dim` must be an integer in [{-f_values.dim()}, {f_values.dim() - 1}], got {dim!r}")
    n = f_values.shape[dim]
    if n < 2:
        raise ValueError(f"`f_values` needs at least 2 samples along dim {dim} for a leave-one-out baseline, got {n}")
    f = f_values.detach()
    return (f.sum(dim=dim, keepdim=True) - f) / (n - 1)
