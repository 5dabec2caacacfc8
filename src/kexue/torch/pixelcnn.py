"""A small PixelCNN prior over a grid of code indices (chapter 08; van den Oord et al. 2016).

p(k) = prod_i p(k_i | k_<i) in raster order (eq. ar-prior). Masked convolutions make position i see only
positions before it: the first layer's mask ("A") also hides the centre, later layers' masks ("B") let a
position see its own features, which by then summarise only positions before it.

Example::

    >>> prior = PixelCNNPrior(num_codes=64, height=4, width=4)
    >>> nll = prior.nll(torch.randint(0, 64, (32, 4, 4)))      # nats per grid, per example
    >>> grids = prior.sample(16)                                 # (16, 4, 4) long
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import one_of, positive_int
from kexue.torch.batches import shuffled_batches


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel sees only rows above and, in the centre row, columns to the left.

    ``mask_type="A"`` also hides the centre (first layer: a position must not see its own index);
    ``"B"`` keeps it (later layers).
    """

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int):
        one_of("mask_type", mask_type, ("A", "B"))
        if positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones(kernel_size, kernel_size)
        centre = kernel_size // 2
        mask[centre, centre + (mask_type == "B"):] = 0
        mask[centre + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(nn.Module):
    """Autoregressive categorical prior over ``height x width`` grids of indices in ``[0, num_codes)``."""

    def __init__(self, num_codes: int, height: int, width: int, hidden: int = 64, layers: int = 4,
                 first_kernel: int = 7):
        super().__init__()
        self.num_codes = positive_int("num_codes", num_codes, minimum=2)
        self.height, self.width = positive_int("height", height), positive_int("width", width)
        hidden = positive_int("hidden", hidden)
        self.embed = nn.Embedding(num_codes, hidden)
        self.first = MaskedConv2d("A", hidden, hidden, first_kernel)
        self.blocks = nn.ModuleList(MaskedConv2d("B", hidden, hidden, 3) for _ in range(positive_int("layers", layers)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_codes, 1))

    def check_grid(self, indices: torch.Tensor) -> None:
        if indices.dtype != torch.long or tuple(indices.shape[1:]) != (self.height, self.width) or indices.ndim != 3:
            raise ValueError(f"expected a long tensor of shape (batch, {self.height}, {self.width}), "
                             f"got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"indices must lie in [0, {self.num_codes})")

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_codes, H, W)``; those at position i depend only on indices before i."""
        self.check_grid(indices)
        h = self.first(self.embed(indices).movedim(-1, 1))
        for block in self.blocks:
            h = h + block(F.relu(h))
        return self.head(h)

    def nll(self, indices: torch.Tensor) -> torch.Tensor:
        """-log p(grid) in nats, per example."""
        return F.cross_entropy(self(indices), indices, reduction="none").sum(dim=(1, 2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` grids drawn position by position in raster order (H * W forward passes)."""
        n = positive_int("n", n)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        device = self.embed.weight.device
        grid = torch.zeros(n, self.height, self.width, dtype=torch.long, device=device)
        for i in range(self.height):
            for j in range(self.width):
                probs = torch.softmax(self(grid)[:, :, i, j] / temperature, dim=1)
                grid[:, i, j] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        return grid


def train_prior(prior: PixelCNNPrior, codes_train: torch.Tensor, codes_val: torch.Tensor, epochs: int,
                batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                keep_best: bool = True) -> list[tuple[float, float]]:
    """Maximum likelihood with Adam; return (train, validation) negative log-likelihood in nats per grid, per epoch.

    With ``keep_best`` the prior ends with the parameters of the epoch with the lowest validation NLL (early
    stopping): a prior over few grids overfits quickly, and the validation grids, not the test grids, decide.
    """
    positive_int("epochs", epochs)
    prior.check_grid(codes_val)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    curve: list[tuple[float, float]] = []
    best_state, best_val = None, math.inf
    for _ in range(epochs):
        prior.train()
        total = 0.0
        for batch in shuffled_batches(codes_train, batch_size, order):
            loss = prior.nll(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        prior.eval()
        with torch.no_grad():
            val = prior.nll(codes_val).mean().item()
        curve.append((total / len(codes_train), val))
        if keep_best and val < best_val:
            best_val, best_state = val, copy.deepcopy(prior.state_dict())
    if best_state is not None:
        prior.load_state_dict(best_state)
    prior.eval()
    return curve
