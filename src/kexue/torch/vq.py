"""Vector quantisation with a straight-through gradient (chapter 08; van den Oord et al. 2017).

Every vector z of the encoder's output grid is replaced by its nearest code e_k of a learned codebook
{e_1..e_K} (eq. vq-nearest). The argmin has no useful gradient, so the forward pass uses e_k while the
backward pass copies the decoder's gradient onto z: z + sg(e_k - z) (eq. straight-through). Two losses
train what the reconstruction cannot reach (eq. vq-loss):

    codebook loss   |sg(z) - e_k|^2   moves the code towards the vectors assigned to it,
    commitment loss |z - sg(e_k)|^2   (times beta) keeps the encoder close to its code.

With ``ema_decay`` the codebook loss is replaced by an exponential moving average of the assigned vectors,
an online k-means step (eq. ema-update); with ``dead_code_threshold`` codes that stop being used are moved
onto distinct encoder outputs of the current batch; with ``init="kmeans"`` the codebook starts at k-means
centroids of the first training batch (eq. kmeans-step, iterated).

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

from kexue._checks import fraction, one_of, positive_int


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
        ``(N,)`` long tensor of indices in ``[0, K)``. No gradient flows through it. Autocast is disabled
        inside, so the distances are computed in the dtype of the inputs.
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
    # Under autocast the matrix product would run in float16/bfloat16, whose 8-11 bit mantissas reorder
    # near codes: the search runs in the inputs' own dtype, and callers pass float32 or float64.
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
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


def _code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code ``0..num_codes-1`` occurs in ``indices`` (long, on the device of ``indices``).

    ``torch.bincount(indices, minlength=num_codes)`` for indices already in range, but written as a scatter:
    on CUDA, ``bincount`` reads the largest index back to the host to size its output (a synchronisation
    per call); the scatter's size is known in advance, so a training step never waits for the device.
    """
    flat = indices.flatten()
    return torch.zeros(num_codes, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def _perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """:func:`codebook_perplexity` without the checks, for indices a quantiser has just produced."""
    p = _code_counts(indices, num_codes).double() / indices.numel()
    return (-torch.xlogy(p, p).sum()).exp()  # xlogy(0, 0) = 0: no boolean mask, no host sync


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


def kmeans(x: torch.Tensor, num_codes: int, iterations: int = 10,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x``: ``iterations`` rounds of eq. kmeans-step; returns ``(K, D)`` centroids.

    The centres start at ``num_codes`` distinct rows of ``x`` drawn with ``generator`` (on the CPU; rows are
    drawn with replacement only when ``x`` has fewer rows than ``num_codes``). A centre that no row is
    nearest to keeps its place, as in eq. ema-update. No host synchronisation inside the loop.
    """
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"`x` must be a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    num_codes = positive_int("num_codes", num_codes)
    iterations = positive_int("iterations", iterations, minimum=0)
    x = x.detach()
    if len(x) >= num_codes:
        rows = torch.randperm(len(x), generator=generator)[:num_codes]
    else:
        rows = torch.randint(len(x), (num_codes,), generator=generator)
    centres = x[rows.to(x.device)].clone()
    for _ in range(iterations):
        assign = nearest_code(x, centres)
        counts = _code_counts(assign, num_codes).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        centres = torch.where((counts > 0).unsqueeze(1), means, centres)
    return centres


INITS = ("uniform", "kmeans")


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of a ``(B, D, *spatial)`` tensor with a straight-through gradient.

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the input's size at dim 1).
        beta: weight of the commitment loss, eq. vq-loss (0.25 in the paper). Both losses are *means* over
            the ``N x D`` entries of the batch's vectors, not sums over D as written in eq. vq-loss.
        ema_decay: ``None`` trains the codebook by the codebook loss; a decay in [0, 1) instead updates it as
            an exponential moving average of the vectors assigned to each code, eq. ema-update (decay 0 is
            one k-means step per batch). The codebook is then a buffer, not a parameter. A code is
            recomputed as m_k / N_k only in a call that assigns it vectors: in exact arithmetic an unused
            code's ratio does not change, and in floating point its shrinking statistics would underflow.
        dead_code_threshold: ``None`` never restarts codes; a value ``t > 0`` moves every code whose moving
            average share of assignments (decay ``usage_decay``) falls below ``t / K`` onto an encoder
            output of the current training batch, distinct codes onto distinct outputs (drawn without
            replacement, as long as no more codes are dead than the batch has vectors).
        usage_decay: decay of the usage average that ``dead_code_threshold`` reads.
        init: ``"uniform"``: codes uniform in [-1/K, 1/K] (the paper specifies no initialisation; this is the
            choice of a widely copied third-party PyTorch port). ``"kmeans"``: at the first training call,
            the codes become k-means centroids (``kmeans_iterations`` rounds) of that batch's vectors.
        kmeans_iterations: Lloyd rounds of the k-means initialisation.
        chunk_size: rows scored at a time by :func:`nearest_code`.

    Updates (EMA, restarts) happen only in training mode and do not change the output of the call that
    makes them; the k-means initialisation happens before the first training call quantises. The distance
    search runs in float32 (or float64) even under autocast. The training path makes no host
    synchronisation: restarts use ``torch.where``, and :attr:`restarts` (a buffer, saved in the state dict)
    is read from the device only when asked for. A restart does not reset an optimiser's moments for the
    code (the quantiser does not own the optimiser): with the codebook loss a dead code had zero gradient
    for many steps, so Adam's first moment for it has already decayed (by beta_1 per step), and a stale
    second moment only shortens its next steps.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema_decay: float | None = None,
                 dead_code_threshold: float | None = None, usage_decay: float = 0.99, init: str = "uniform",
                 kmeans_iterations: int = 10, chunk_size: int = 4096):
        super().__init__()
        self.num_codes = positive_int("num_codes", num_codes)
        self.dim = positive_int("dim", dim)
        if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"`beta` must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)
        if ema_decay is not None:
            ema_decay = fraction("ema_decay", ema_decay, allow_zero=True)
            if ema_decay == 1:
                raise ValueError("`ema_decay` must be < 1: with decay 1 the codebook never moves")
        self.ema_decay = ema_decay
        if dead_code_threshold is not None and (isinstance(dead_code_threshold, bool) or not (
                isinstance(dead_code_threshold, (int, float)) and 0 < dead_code_threshold <= 1)):
            raise ValueError(f"`dead_code_threshold` must be None or in (0, 1], got {dead_code_threshold!r}")
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = fraction("usage_decay", usage_decay)
        self.init = one_of("init", init, INITS)
        self.kmeans_iterations = positive_int("kmeans_iterations", kmeans_iterations, minimum=0)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        codes = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema_decay is None:
            self.codebook = nn.Parameter(codes)
        else:
            self.register_buffer("codebook", codes)
            self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA of counts n_k
            self.register_buffer("code_sum", torch.zeros(num_codes, dim))  # EMA of sums of assigned vectors
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))  # EMA of shares n_k / N
        self.register_buffer("restart_count", torch.zeros((), dtype=torch.long))  # codes restarted so far
        self.register_buffer("initialized", torch.tensor(init == "uniform"))
        self._needs_init = init != "uniform"  # host copy of `not initialized`: no sync per call
        self.register_load_state_dict_post_hook(_sync_init_flag)

    @property
    def restarts(self) -> int:
        """Codes restarted so far (saved in the state dict; reading it synchronises with the device)."""
        return int(self.restart_count)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema_decay={self.ema_decay}, "
                f"dead_code_threshold={self.dead_code_threshold}, init={self.init!r}")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for an index grid ``(B, *spatial)`` as a ``(B, D, *spatial)`` tensor (for decoding a prior's samples).

        Indices outside ``[0, num_codes)`` raise ``ValueError`` (the range check reads the device once).
        """
        if indices.dtype != torch.long or indices.ndim < 1:
            raise TypeError(f"`indices` must be a long tensor of shape (batch, ...), got {indices.dtype} "
                            f"{tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):  # reads the device
            raise ValueError(f"`indices` must lie in [0, {self.num_codes})")
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> Quantized:
        if not z.is_floating_point():
            raise TypeError(f"`z` must be a floating-point tensor, got {z.dtype}")
        flat = channels_last(z, self.dim)
        if self.training and self._needs_init:
            self.initialize(flat)
        # float16/bfloat16 inputs (autocast) are scored in float32: see nearest_code
        search = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
        indices = nearest_code(flat.detach().to(search), self.codebook.detach().to(search), self.chunk_size)
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
    def initialize(self, flat: torch.Tensor) -> None:
        """k-means initialisation from ``(N, D)`` vectors (``init="kmeans"``); the EMA statistics restart at 0."""
        centres = kmeans(flat.detach().to(self.codebook.dtype), self.num_codes, self.kmeans_iterations)
        self.codebook.copy_(centres)
        if self.ema_decay is not None:
            self.cluster_size.zero_()
            self.code_sum.zero_()
        self.initialized.fill_(True)
        self._needs_init = False

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """The in-place updates of a training call: EMA step (if enabled), usage average, dead-code restarts."""
        counts = _code_counts(indices, self.num_codes).to(self.usage.dtype)
        if self.ema_decay is not None:
            gamma = self.ema_decay
            sums = torch.zeros_like(self.code_sum).index_add_(0, indices, flat.to(self.code_sum.dtype))
            # N_k <- gamma N_k + (1 - gamma) n_k ; m_k <- gamma m_k + (1 - gamma) sum_{i: k(i) = k} z_i ;
            # e_k = m_k / N_k. Both start at 0, so the ratio needs no bias correction. Only codes assigned
            # vectors now are recomputed: for the others the ratio is unchanged in exact arithmetic, while
            # both statistics shrink towards float underflow (after ~9,000 unused steps at gamma = 0.99 in
            # float32 their ratio is rounding noise).
            self.cluster_size.mul_(gamma).add_(counts, alpha=1 - gamma)
            self.code_sum.mul_(gamma).add_(sums, alpha=1 - gamma)
            means = self.code_sum / self.cluster_size.clamp_min(torch.finfo(self.cluster_size.dtype).tiny).unsqueeze(1)
            self.codebook.copy_(torch.where((counts > 0).unsqueeze(1), means.to(self.codebook.dtype), self.codebook))
        self.usage.mul_(self.usage_decay).add_(counts / len(indices), alpha=1 - self.usage_decay)
        if self.dead_code_threshold is None:
            return
        dead = self.usage < self.dead_code_threshold / self.num_codes  # (K,) bool, stays on the device
        # the r-th dead code (r = 0, 1, ...) takes the r-th row of a random permutation of the batch:
        # distinct rows for distinct codes (without replacement) whenever at most N codes are dead
        rank = (dead.cumsum(0) - 1).clamp_min(0) % len(flat)
        rows = torch.randperm(len(flat), device=flat.device)[rank]
        candidates = flat[rows].to(self.codebook.dtype)
        self.codebook.copy_(torch.where(dead.unsqueeze(1), candidates, self.codebook))
        # a fresh code gets the average share as a grace period
        self.usage.copy_(torch.where(dead, torch.full_like(self.usage, 1.0 / self.num_codes), self.usage))
        if self.ema_decay is not None:  # keep e_k = m_k / N_k for the restarted code
            self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
            self.code_sum.copy_(torch.where(dead.unsqueeze(1), candidates.to(self.code_sum.dtype), self.code_sum))
        self.restart_count.add_(dead.sum())


def _sync_init_flag(module: VectorQuantizer, incompatible_keys: object) -> None:
    """After ``load_state_dict``: a loaded, initialised codebook is not initialised again."""
    module._needs_init = not bool(module.initialized)
