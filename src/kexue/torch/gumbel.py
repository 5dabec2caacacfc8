"""The Gumbel-Max trick and its Gumbel-Softmax (Concrete) relaxation (chapter 07).

References: E. J. Gumbel (1954); E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with
Gumbel-Softmax", ICLR 2017; C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution", ICLR 2017;
Su Jianlin, "漫谈重参数:从正态分布到Gumbel Softmax", 2019-06-10, https://kexue.fm/archives/6705.
"""

from __future__ import annotations

import math

import torch


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise g = -log(-log u), eq. ``gumbel-noise``, finite for every u in [0, 1].

    u is clamped to [tiny, 1 - eps/2] of its dtype first: at u = 0 the formula gives -inf and at u = 1 it
    gives +inf. The clamp changes the distribution only on events of probability below 1e-7 (float32).
    """
    if not torch.is_floating_point(u):
        raise TypeError(f"`u` must be a floating-point tensor, got {u.dtype}")
    if torch.isnan(u).any() or (u < 0).any() or (u > 1).any():
        raise ValueError("`u` must lie in [0, 1]")
    info = torch.finfo(u.dtype)
    u = u.clamp(min=info.tiny, max=1.0 - info.eps / 2)
    return -torch.log(-torch.log(u))


def sample_gumbel(shape: torch.Size | tuple[int, ...], *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples of ``shape`` (never inf or NaN)."""
    return gumbel_from_uniform(torch.rand(shape, dtype=dtype, device=device, generator=generator))


def check_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits may be -inf (probability 0) but not NaN or +inf, and each row needs one finite entry."""
    if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
        raise TypeError("`logits` must be a floating-point torch.Tensor")
    if logits.dim() == 0:
        raise ValueError("`logits` must have a class dimension (the last one)")
    if torch.isnan(logits).any() or (logits == math.inf).any():
        raise ValueError("`logits` must not contain NaN or +inf (use -inf for a class of probability 0)")
    if not torch.isfinite(logits).any(dim=-1).all():
        raise ValueError("every row of `logits` needs at least one class of non-zero probability")
    return logits


def probs_to_logits(probs: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """log p for a probability vector (rows summing to 1 within ``atol``); p = 0 gives -inf."""
    if not isinstance(probs, torch.Tensor) or not torch.is_floating_point(probs):
        raise TypeError("`probs` must be a floating-point torch.Tensor")
    if torch.isnan(probs).any() or (probs < 0).any():
        raise ValueError("`probs` must be non-negative and not NaN")
    total = probs.sum(dim=-1)
    if (total - 1).abs().max() > atol:
        raise ValueError(f"`probs` must sum to 1 along the last dimension (within {atol}); sums range "
                         f"{total.min().item():.6g}..{total.max().item():.6g}")
    return torch.log(probs)


def gumbel_max(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class indices argmax_i(logits_i + g_i), g_i ~ Gumbel(0, 1): exact samples of softmax(logits), eq. ``gumbel-max``."""
    logits = check_logits(logits)
    noise = sample_gumbel(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    return torch.argmax(logits + noise, dim=-1)


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-Softmax sample softmax((logits + g) / tau), eq. ``gumbel-softmax``; ``hard=True`` is straight-through.

    With ``hard=True`` the forward value is the one-hot vector of the Gumbel-Max sample and the gradient
    is that of the relaxed sample (eq. ``straight-through``). Classes with logit -inf get exactly 0.
    """
    logits = check_logits(logits)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"`tau` must be a finite number > 0, got {tau!r}")
    noise = sample_gumbel(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft
