"""Shuffled minibatches of an in-memory tensor, the loop every small training function of the book shares."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kexue._checks import positive_int


def shuffled_batches(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of ``data`` in batches of ``batch_size`` rows, in an order drawn from ``generator`` (on the CPU)."""
    batch_size = positive_int("batch_size", batch_size)
    order = torch.randperm(len(data), generator=generator).to(data.device)
    for rows in order.split(batch_size):
        yield data[rows]
