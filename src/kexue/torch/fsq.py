"""Finite scalar quantisation: a codebook-free alternative to vector quantisation (chapter 08).

Mentzer et al. (2023) project to a few channels and round each channel to one of L_c levels; the implicit
codebook is the grid of all prod_c L_c level combinations: there are no codebook or commitment losses and
no codes that training moves, so there are no collapse dynamics to cure (but an encoder can still leave grid
points unused). Channel c is squashed into (0, L_c - 1) by (L_c - 1) * sigmoid(z_c), rounded with a
straight-through gradient (eq. fsq), and rescaled to [-1, 1]. The index of a grid point is its mixed-radix
number.

Example::

    >>> fsq = FiniteScalarQuantizer(levels=(8, 5, 5, 5))   # 1000 implicit codes, 4 channels
    >>> out = fsq(torch.randn(8, 4, 7, 7))
    >>> out.indices.max() < 1000
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kexue._checks import positive_int
from kexue.torch.vq import Quantized, _perplexity, channels_first, channels_last


class FiniteScalarQuantizer(nn.Module):
    """Round each of ``len(levels)`` channels to ``levels[c]`` values in [-1, 1]; same interface as VectorQuantizer.

    Args:
        levels: number of levels per channel, each at least 2; ``dim = len(levels)``,
            ``num_codes = prod(levels)``.
    """

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
            raise ValueError(f"`levels` must be a non-empty sequence of integers >= 2, got {levels!r}")
        self.levels = tuple(positive_int("levels[i]", n, minimum=2) for n in levels)
        self.dim = len(self.levels)
        self.num_codes = math.prod(self.levels)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        radix = [math.prod(self.levels[:i]) for i in range(self.dim)]
        self.register_buffer("_radix", torch.tensor(radix, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}"

    def to_unit(self, steps: torch.Tensor) -> torch.Tensor:
        """Level numbers ``0..L_c-1`` -> values in [-1, 1], in the dtype of ``steps``."""
        half = ((self._levels - 1) / 2).to(steps.dtype)
        return (steps - half) / half

    def lookup(self, indices: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Grid points for an index grid ``(B, *spatial)`` as a ``(B, dim, *spatial)`` tensor of ``dtype``.

        ``dtype`` defaults to torch's default dtype; pass the decoder's dtype (e.g. ``torch.float64``). Indices
        outside ``[0, num_codes)`` raise ``ValueError`` (they would otherwise wrap onto other grid points).
        """
        if indices.dtype != torch.long or indices.ndim < 1:
            raise TypeError(f"`indices` must be a long tensor of shape (batch, ...), got {indices.dtype} "
                            f"{tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):  # reads the device
            raise ValueError(f"`indices` must lie in [0, {self.num_codes})")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
        steps = (indices.unsqueeze(-1) // self._radix) % self._levels.long()
        return self.to_unit(steps.to(dtype)).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> Quantized:
        flat = channels_last(z, self.dim)
        levels = self._levels.to(flat.dtype)
        bounded = (levels - 1) * torch.sigmoid(flat)  # in (0, L - 1): rounding gives exactly L values
        steps = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
        indices = (steps.detach().long() * self._radix).sum(dim=1)
        zero = torch.zeros((), dtype=flat.dtype, device=flat.device)
        return Quantized(
            quantized=channels_first(self.to_unit(steps), z),
            indices=indices.reshape(z.shape[0], *z.shape[2:]),
            loss=zero, codebook_loss=zero, commitment_loss=zero,
            perplexity=_perplexity(indices, self.num_codes),
        )
