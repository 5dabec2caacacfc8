"""The Gumbel-Max trick and its Gumbel-Softmax (Concrete) relaxation (chapter 07).

References: E. J. Gumbel (1954); E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with
Gumbel-Softmax", ICLR 2017; C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution", ICLR 2017;
Su Jianlin, "漫谈重参数:从正态分布到Gumbel Softmax", 2019-06-10, https://kexue.fm/archives/6705.

Precision: the noise is always drawn and combined with the logits in float32, or in float64 for float64
logits, whatever the logits' dtype. A float16 or bfloat16 uniform has so few values near 0 and 1 that the
tails of -log(-log u) are cut off, and the rare classes are drawn too seldom.

Validation: with ``validate=True`` (the default) the values of the logits (and of a tensor ``tau``) are
checked with one host-device synchronisation per call; ``validate=False`` skips every check of values (no
synchronisation, as in ``torch.nn.functional.gumbel_softmax``), and NaN logits then give NaN samples.
"""

from __future__ import annotations

import math
import numbers

import torch


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64: the precision the noise is drawn in."""
    return torch.promote_types(dtype, torch.float32)


def _check_dim(name: str, x: torch.Tensor, dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"`dim` must be an integer, got {type(dim).__name__} {dim!r}")
    if x.dim() == 0:
        raise ValueError(f"`{name}` must have a class dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"`dim` must be in [{-x.dim()}, {x.dim() - 1}] for `{name}` of shape {tuple(x.shape)}, got {dim}")
    return int(dim)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    """-log(-log u) with u clamped to [tiny, 1 - eps/2] of its dtype; no checks (the hot path)."""
    info = torch.finfo(u.dtype)
    return -torch.log(-torch.log(u.clamp(min=info.tiny, max=1.0 - info.eps / 2)))


def _noise(shape: torch.Size, dtype: torch.dtype, device: torch.device,
           generator: torch.Generator | None) -> torch.Tensor:
    return _gumbel(torch.rand(shape, dtype=dtype, device=device, generator=generator))


def gumbel_from_uniform(u: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """Standard Gumbel noise g = -log(-log u), eq. ``gumbel-noise``, finite for every u in [0, 1].

    u is clamped to [tiny, 1 - eps/2] of its dtype first: at u = 0 the formula gives -inf and at u = 1 it
    gives +inf. For float32 u the clamp changes the distribution only on events of probability below 1e-7;
    float16 and bfloat16 u are too coarse for the tails (pass float32 or float64 u). The result is computed
    and returned in float32, or float64 for float64 u. ``validate`` checks u in [0, 1] (one host sync).
    """
    if not isinstance(u, torch.Tensor) or not torch.is_floating_point(u):
        raise TypeError(f"`u` must be a floating-point torch.Tensor, got {getattr(u, 'dtype', type(u).__name__)}")
    if validate and bool((torch.isnan(u) | (u < 0) | (u > 1)).any()):
        raise ValueError("`u` must lie in [0, 1] (no NaN)")
    return _gumbel(u.to(_work_dtype(u.dtype)))


def sample_gumbel(shape: torch.Size | tuple[int, ...], *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples of ``shape`` (never inf or NaN), eq. ``gumbel-noise``.

    The uniform is drawn in float32 (float64 for ``dtype=float64``) and the result cast to ``dtype``, so the
    tails are right in every precision. The functions below draw their noise exactly like this: with the
    same ``generator`` state, ``sample_gumbel(logits.shape, dtype=logits.dtype, ...)`` reproduces their
    noise (before the cast to ``dtype`` for float16/bfloat16).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating-point torch.dtype, got {dtype!r}")
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"`shape` must be a tuple of integers such as (5,), got {type(shape).__name__} {shape!r}")
    if any(n < 0 for n in shape):
        raise ValueError(f"`shape` must not have negative sizes, got {tuple(shape)!r}")
    return _noise(torch.Size([int(n) for n in shape]), _work_dtype(dtype), device, generator).to(dtype)


def check_logits(logits: torch.Tensor, dim: int = -1, validate: bool = True) -> torch.Tensor:
    """Logits may be -inf (probability 0) but not NaN or +inf, and each row (along ``dim``) needs one finite entry.

    The type and shape are always checked (no cost); the values only with ``validate`` (one host sync).
    """
    if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
        raise TypeError(f"`logits` must be a floating-point torch.Tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    _check_dim("logits", logits, dim)
    if validate:
        forbidden = torch.isnan(logits) | (logits == math.inf)
        ok = ~forbidden.any() & torch.isfinite(logits).any(dim=dim).all()
        if not bool(ok):  # the only synchronisation; the slow path below finds which rule failed
            if bool(forbidden.any()):
                raise ValueError("`logits` must not contain NaN or +inf (use -inf for a class of probability 0)")
            raise ValueError("every row of `logits` needs at least one class of non-zero probability")
    return logits


def default_sum_tolerance(dtype: torch.dtype, n_classes: int) -> float:
    """How far from 1 the sum of a rounded probability vector of ``n_classes`` entries in ``dtype`` may be.

    A softmax normalises by a sum whose rounding error grows with the number of terms K. We allow
    8 sqrt(K) eps of the dtype, and never less than 1e-6 (so decimals typed in float64 are accepted). This
    is an allowance, not a bound: float32 softmaxes of logits ~ N(0, 9) were measured off by 8 eps at
    K = 5e4, 600 eps at K = 1e6 and 3,400 eps at K = 4e6 (the allowance: 1,800, 8,000 and 16,000 eps).
    """
    eps = torch.finfo(dtype).eps
    return max(1e-6, 8 * math.sqrt(max(n_classes, 1)) * eps)


def probs_to_logits(probs: torch.Tensor, atol: float | None = None, dim: int = -1) -> torch.Tensor:
    """log p for a probability vector along ``dim`` (sums within ``atol`` of 1); p = 0 gives -inf.

    ``atol=None`` uses :func:`default_sum_tolerance` for the dtype and the number of classes. This is a
    conversion, not a hot path: it always checks the values (one host sync).
    """
    if not isinstance(probs, torch.Tensor) or not torch.is_floating_point(probs):
        raise TypeError(f"`probs` must be a floating-point torch.Tensor, got {getattr(probs, 'dtype', type(probs).__name__)}")
    dim = _check_dim("probs", probs, dim)
    if atol is None:
        atol = default_sum_tolerance(probs.dtype, probs.shape[dim])
    elif isinstance(atol, bool) or not isinstance(atol, numbers.Real) or not atol >= 0:
        raise ValueError(f"`atol` must be a number >= 0 or None, got {atol!r}")
    if bool((torch.isnan(probs) | (probs < 0)).any()):
        raise ValueError("`probs` must be non-negative and not NaN")
    total = probs.sum(dim=dim, dtype=torch.float64)  # the check itself must not add float32 rounding
    if bool(((total - 1).abs() > atol).any()):
        raise ValueError(f"`probs` must sum to 1 along dim {dim} (within {atol:.3g}); sums range "
                         f"{total.min().item():.9g}..{total.max().item():.9g}")
    return torch.log(probs)


# The smallest temperature accepted: the smallest normal float32. Below it 1/tau overflows float32 and the
# relaxed sample's backward pass (which divides by tau) gives inf or NaN.
TAU_MIN = torch.finfo(torch.float32).tiny


def _check_tau(tau: float | torch.Tensor, validate: bool) -> float | torch.Tensor:
    if isinstance(tau, torch.Tensor):
        if tau.dim() != 0 or not torch.is_floating_point(tau):
            raise TypeError(f"`tau` must be a real number or a 0-d floating-point tensor, got a tensor of shape "
                            f"{tuple(tau.shape)} and dtype {tau.dtype}")
        if validate and not bool(torch.isfinite(tau) & (tau >= TAU_MIN)):
            raise ValueError(f"`tau` must be finite and >= {TAU_MIN:.3g}, got {tau.item()!r}")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"`tau` must be a real number or a 0-d floating-point tensor, got {type(tau).__name__} {tau!r}")
    if not (math.isfinite(tau) and tau >= TAU_MIN):
        raise ValueError(f"`tau` must be finite and >= {TAU_MIN:.3g}, got {tau!r}")
    return float(tau)


def gumbel_max(logits: torch.Tensor, generator: torch.Generator | None = None, *, dim: int = -1,
               validate: bool = True) -> torch.Tensor:
    """Class indices argmax_i(logits_i + g_i) along ``dim``, g_i ~ Gumbel(0, 1): exact samples of softmax(logits), eq. ``gumbel-max``."""
    check_logits(logits, dim, validate)
    work = _work_dtype(logits.dtype)
    return torch.argmax(logits.to(work) + _noise(logits.shape, work, logits.device, generator), dim=dim)


def gumbel_softmax(logits: torch.Tensor, tau: float | torch.Tensor, hard: bool = False,
                   generator: torch.Generator | None = None, *, dim: int = -1, validate: bool = True) -> torch.Tensor:
    """Gumbel-Softmax sample softmax((logits + g) / tau) along ``dim``, eq. ``gumbel-softmax``.

    ``hard=True`` is straight-through (eq. ``straight-through``): the forward value is the one-hot vector of
    the Gumbel-Max sample argmax(logits + g), an exact categorical sample at every tau, and the gradient is
    that of the relaxed sample from the same noise. Classes with logit -inf get exactly 0. The sample is
    computed in float32 (float64 for float64 logits) and returned in the logits' dtype; ``tau`` may be a
    number or a 0-d tensor (a learnable temperature), at least ``TAU_MIN`` (the smallest normal float32).
    """
    check_logits(logits, dim, validate)
    tau = _check_tau(tau, validate)
    if not isinstance(hard, bool):
        raise TypeError(f"`hard` must be a bool, got {type(hard).__name__} {hard!r}")
    work = _work_dtype(logits.dtype)
    perturbed = logits.to(work) + _noise(logits.shape, work, logits.device, generator)
    # Shift by the (constant) row maximum before dividing by tau, so that perturbed / tau cannot overflow to
    # inf - inf = NaN however small tau is; softmax is shift-invariant, so value and gradient are unchanged.
    soft = torch.softmax((perturbed - perturbed.detach().amax(dim=dim, keepdim=True)) / tau, dim=dim)
    if hard:
        index = perturbed.argmax(dim=dim, keepdim=True)  # the Gumbel-Max sample, not argmax of rounded soft
        one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
        soft = one_hot + (soft - soft.detach())  # exactly one_hot forward (x - x == 0), soft's gradient backward
    return soft.to(logits.dtype)
