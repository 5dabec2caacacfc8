"""Vector quantisation with a straight-through gradient (chapter 08; van den Oord et al. 2017).

Every vector z of the encoder's output grid is replaced by its nearest code e_k of a learned codebook
{e_1..e_K} (eq. vq-nearest). The argmin has no useful gradient, so the forward pass uses e_k while the
backward pass copies the decoder's gradient onto z: z + sg(e_k - z) (eq. straight-through). Two losses
train what the reconstruction cannot reach (eq. vq-loss):

    codebook loss   |sg(z) - e_k|^2   moves the code towards the vectors assigned to it,
    commitment loss |z - sg(e_k)|^2   (times beta) keeps the encoder close to its code.

With ``ema_decay`` the codebook loss is replaced by an exponential moving average of the assigned vectors,
an online k-means step (eq. ema-update); with ``dead_code_threshold`` codes that stop being used are moved
onto encoder outputs of the current batch.

Example::

    >>> vq = VectorQuantizer(num_codes=512, dim=64, beta=0.25, ema_decay=0.99)
    >>> out = vq(torch.randn(8, 64, 7, 7))          # channels at dim 1, like a conv feature map
    >>> out.quantized.shape, out.indices.shape       # (8, 64, 7, 7), (8, 7, 7)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import fraction, positive_int


class Quantized(NamedTuple):
    """What a quantiser returns. ``quantized`` has the input's shape; ``indices`` drops its channel dim."""

    quantized: torch.Tensor  # straight-through: forward value e_k, gradient to the input as identity
    indices: torch.Tensor  # index of the code used at every position (long)
    loss: torch.Tensor  # codebook_loss + beta * commitment_loss: add it to the reconstruction loss
    codebook_loss: torch.Tensor  # |sg(z) - e|^2, zero when the codebook is updated by EMA
    commitment_loss: torch.Tensor  # |z - sg(e)|^2, before the factor beta
    perplexity: torch.Tensor  # exp(entropy of code usage in this call), between 1 and num_codes


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) for every row of ``z``, eq. vq-nearest.

    Args:
        z: ``(N, D)`` vectors.
        codebook: ``(K, D)`` codes, same dtype and device as ``z``.
        chunk_size: rows of ``z`` scored at a time; the only large temporary is ``chunk_size x K``.

    Returns:
        ``(N,)`` long tensor of indices in ``[0, K)``. No gradient flows through it.
    """
    if z.ndim != 2 or codebook.ndim != 2:
        raise ValueError(f"`z` must be (N, D) and `codebook` (K, D); got shapes {tuple(z.shape)} and "
                         f"{tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"`z` has vectors of dimension {z.shape[1]} but the codes have dimension {codebook.shape[1]}")
    if z.dtype != codebook.dtype or z.device != codebook.device:
        raise ValueError(f"`z` ({z.dtype}, {z.device}) and `codebook` ({codebook.dtype}, {codebook.device}) "
                         "must share dtype and device")
    chunk_size = positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2, and |z|^2 is the same for every code of a row, so the argmin
        # needs only |e|^2 - 2 z.e: one matrix product per chunk, no (N, K, D) difference tensor, no sqrt.
        code_norms = codebook.pow(2).sum(dim=1)
        out = torch.empty(len(z), dtype=torch.long, device=z.device)
        for start in range(0, len(z), chunk_size):
            scores = torch.addmm(code_norms, z[start:start + chunk_size], codebook.T, alpha=-2.0)
            out[start:start + chunk_size] = scores.argmin(dim=1)
    return out


def codebook_perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(H(p)) of the empirical code frequencies p, eq. perplexity: K for uniform use, 1 for one code."""
    num_codes = positive_int("num_codes", num_codes)
    if indices.dtype != torch.long:
        raise TypeError(f"`indices` must be a long tensor, got {indices.dtype}")
    if indices.numel() == 0:
        raise ValueError("`indices` is empty")
    if indices.min() < 0 or indices.max() >= num_codes:
        raise ValueError(f"`indices` must lie in [0, {num_codes}), got [{indices.min()}, {indices.max()}]")
    return _perplexity(indices, num_codes)


def _perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """:func:`codebook_perplexity` without the checks, for indices a quantiser has just produced."""
    p = torch.bincount(indices.flatten(), minlength=num_codes).double() / indices.numel()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return entropy.exp()


def channels_last(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``(B, D, *spatial)`` -> ``(B * prod(spatial), D)``, checking that the channel dimension is ``dim``."""
    if z.ndim < 2 or z.shape[1] != dim:
        raise ValueError(f"expected input of shape (batch, {dim}, ...) with the code dimension at dim 1, "
                         f"got {tuple(z.shape)}")
    return z.movedim(1, -1).reshape(-1, dim)


def channels_first(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`channels_last`: rows back to the layout (and shape) of ``like``."""
    spatial = (like.shape[0], *like.shape[2:])
    return flat.reshape(*spatial, flat.shape[-1]).movedim(-1, 1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of a ``(B, D, *spatial)`` tensor with a straight-through gradient.

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the input's size at dim 1).
        beta: weight of the commitment loss, eq. vq-loss (0.25 in the paper).
        ema_decay: ``None`` trains the codebook by the codebook loss; a decay in [0, 1) instead updates it as
            an exponential moving average of the vectors assigned to each code, eq. ema-update (decay 0 is
            one k-means step per batch). The codebook is then a buffer, not a parameter.
        dead_code_threshold: ``None`` never restarts codes; a value ``t > 0`` moves every code whose moving
            average share of assignments (decay ``usage_decay``) falls below ``t / K`` onto a random encoder
            output of the current training batch.
        usage_decay: decay of the usage average that ``dead_code_threshold`` reads.
        chunk_size: rows scored at a time by :func:`nearest_code`.

    Codes are initialised uniformly in [-1/K, 1/K], as in the paper's reference implementation; updates
    (EMA, restarts) happen only in training mode and do not change the output of the call that makes them.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema_decay: float | None = None,
                 dead_code_threshold: float | None = None, usage_decay: float = 0.99, chunk_size: int = 4096):
        super().__init__()
        self.num_codes = positive_int("num_codes", num_codes)
        self.dim = positive_int("dim", dim)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"`beta` must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)
        if ema_decay is not None:
            ema_decay = fraction("ema_decay", ema_decay, allow_zero=True)
            if ema_decay == 1:
                raise ValueError("`ema_decay` must be < 1: with decay 1 the codebook never moves")
        self.ema_decay = ema_decay
        if dead_code_threshold is not None and not (isinstance(dead_code_threshold, (int, float))
                                                    and 0 < dead_code_threshold <= 1):
            raise ValueError(f"`dead_code_threshold` must be None or in (0, 1], got {dead_code_threshold!r}")
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = fraction("usage_decay", usage_decay)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        codes = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema_decay is None:
            self.codebook = nn.Parameter(codes)
        else:
            self.register_buffer("codebook", codes)
            self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA of counts n_k
            self.register_buffer("code_sum", torch.zeros(num_codes, dim))  # EMA of sums of assigned vectors
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))  # EMA of shares n_k / N
        self.restarts = 0  # codes restarted so far (not saved in the state dict)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema_decay={self.ema_decay}, "
                f"dead_code_threshold={self.dead_code_threshold}")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for an index grid ``(B, *spatial)`` as a ``(B, D, *spatial)`` tensor (for decoding a prior's samples)."""
        if indices.dtype != torch.long or indices.ndim < 1:
            raise TypeError(f"`indices` must be a long tensor of shape (batch, ...), got {indices.dtype} "
                            f"{tuple(indices.shape)}")
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> Quantized:
        flat = channels_last(z, self.dim)
        indices = nearest_code(flat.detach(), self.codebook.detach().to(flat.dtype), self.chunk_size)
        codes = F.embedding(indices, self.codebook).to(flat.dtype)
        commitment = F.mse_loss(flat, codes.detach())
        if self.ema_decay is None:
            codebook_loss = F.mse_loss(codes, flat.detach())
        else:
            codebook_loss = torch.zeros((), dtype=flat.dtype, device=flat.device)
        # forward value e_k, and d(out)/dz = identity: the decoder's gradient is copied onto the encoder
        straight_through = flat + (codes - flat).detach()
        if self.training:
            self.update_codebook(flat.detach(), indices)
        return Quantized(
            quantized=channels_first(straight_through, z),
            indices=indices.reshape(z.shape[0], *z.shape[2:]),
            loss=codebook_loss + self.beta * commitment,
            codebook_loss=codebook_loss,
            commitment_loss=commitment,
            perplexity=_perplexity(indices, self.num_codes),
        )

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """The in-place updates of a training call: EMA step (if enabled), usage average, dead-code restarts."""
        counts = torch.bincount(indices, minlength=self.num_codes).to(self.usage.dtype)
        if self.ema_decay is not None:
            gamma = self.ema_decay
            sums = torch.zeros_like(self.code_sum).index_add_(0, indices, flat.to(self.code_sum.dtype))
            # N_k <- gamma N_k + (1 - gamma) n_k ; m_k <- gamma m_k + (1 - gamma) sum_{i: k(i) = k} z_i ;
            # e_k = m_k / N_k. Both start at 0, so the ratio needs no bias correction; a code with N_k = 0
            # (never used, or decay 0 and unused now) keeps its value, as in k-means.
            self.cluster_size.mul_(gamma).add_(counts, alpha=1 - gamma)
            self.code_sum.mul_(gamma).add_(sums, alpha=1 - gamma)
            live = self.cluster_size > 0
            self.codebook[live] = self.code_sum[live] / self.cluster_size[live].unsqueeze(1)
        self.usage.mul_(self.usage_decay).add_(counts / len(indices), alpha=1 - self.usage_decay)
        if self.dead_code_threshold is None:
            return
        dead = (self.usage < self.dead_code_threshold / self.num_codes).nonzero().flatten()
        if len(dead) == 0:
            return
        pick = torch.randint(len(flat), (len(dead),), device=flat.device)
        self.codebook[dead] = flat[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0 / self.num_codes  # a fresh code gets the average share as a grace period
        if self.ema_decay is not None:  # keep e_k = m_k / N_k for the restarted code
            self.cluster_size[dead] = 1.0
            self.code_sum[dead] = self.codebook[dead]
        self.restarts += len(dead)
