"""A gated PixelCNN prior over a grid of code indices (chapter 08; van den Oord et al. 2016).

p(k) = prod_i p(k_i | k_<i) in raster order (eq. ar-prior). Masked convolutions (PixelRNN's masks "A" and
"B", :class:`MaskedConv2d`) make position i see only earlier positions, but a stack of them has a blind
spot: positions above and to the right fall outside the receptive field. :class:`PixelCNNPrior` uses the
gated PixelCNN's two stacks instead (van den Oord et al., "Conditional Image Generation with PixelCNN
Decoders"): a *vertical* stack that sees whole rows above, fed (shifted down one row) into a *horizontal*
stack that sees the current row to the left; no blind spot, and the constructor checks that the stacks
reach across the whole grid. :func:`dependency_pattern` measures, by perturbation, which positions each
position sees.

Example::

    >>> prior = PixelCNNPrior(num_codes=64, height=4, width=4, layers=3)
    >>> nll = prior.nll(torch.randint(0, 64, (32, 4, 4)))      # nats per grid, per example
    >>> grids = prior.sample(16)                                 # (16, 4, 4) long
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import one_of, positive_int
from kexue.torch.batches import shuffled_batches


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel sees only rows above and, in the centre row, columns to the left.

    ``mask_type="A"`` also hides the centre (first layer: a position must not see its own index);
    ``"B"`` keeps it (later layers). The masks of PixelRNN (van den Oord, Kalchbrenner and Kavukcuoglu
    2016); a stack of them has a blind spot above and to the right (see :func:`dependency_pattern`).
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


def _gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of the two halves of the channels (the gated PixelCNN's activation)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of the vertical and horizontal stacks, reach ``r = kernel_size // 2``.

    vertical: a ``(r + 1) x (2r + 1)`` convolution sees rows ``i - r .. i``, columns ``j - r .. j + r``;
    shifted down one row it reaches the horizontal stack, which thus sees only rows above. horizontal: a
    ``1 x (r + 1)`` convolution sees columns ``j - r .. j`` of the current row (``first``: the row is first
    shifted right by one, so position ``j`` does not see itself), plus a residual connection after the first.
    """

    def __init__(self, channels: int, kernel_size: int, first: bool):
        super().__init__()
        self.r, self.first = kernel_size // 2, first
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.r + 1, 2 * self.r + 1))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.r + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.r
        v_feat = self.vertical(F.pad(v, (r, r, r, 0)))  # (left, right, top, bottom) padding
        v_down = F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1]  # row i now holds row i - 1: only rows above
        h_in = F.pad(h, (1, 0))[:, :, :, :-1] if self.first else h  # first layer: column j holds j - 1
        h_feat = self.horizontal(F.pad(h_in, (r, 0))) + self.vertical_to_horizontal(v_down)
        h_out = self.horizontal_out(_gate(h_feat))
        return _gate(v_feat), h_out if self.first else h + h_out


class PixelCNNPrior(nn.Module):
    """Gated PixelCNN prior over ``height x width`` grids of indices in ``[0, num_codes)``, eq. ar-prior.

    ``layers`` gated layers (:class:`GatedLayer`) of reach ``kernel_size // 2`` each; the stacks must reach
    across the grid, ``layers * (kernel_size // 2) >= max(width - 1, height - 2)``, so that every position
    sees every earlier position (a ``ValueError`` otherwise).
    """

    def __init__(self, num_codes: int, height: int, width: int, hidden: int = 64, layers: int = 4,
                 kernel_size: int = 3):
        super().__init__()
        self.num_codes = positive_int("num_codes", num_codes, minimum=2)
        self.height, self.width = positive_int("height", height), positive_int("width", width)
        hidden = positive_int("hidden", hidden)
        layers = positive_int("layers", layers)
        if positive_int("kernel_size", kernel_size, minimum=3) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd and >= 3, got {kernel_size}")
        reach = layers * (kernel_size // 2)
        if reach < max(width - 1, height - 2):
            raise ValueError(f"`layers` * (`kernel_size` // 2) = {reach} does not reach across a {height}x{width} "
                             f"grid (needs >= {max(width - 1, height - 2)}): some earlier positions would be unseen")
        self.embed = nn.Embedding(num_codes, hidden)
        self.layers = nn.ModuleList(GatedLayer(hidden, kernel_size, first=i == 0) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_codes, 1))

    def check_grid(self, indices: torch.Tensor) -> None:
        """``ValueError`` unless ``indices`` is a long ``(batch, height, width)`` grid of values in ``[0, num_codes)``."""
        if indices.dtype != torch.long or tuple(indices.shape[1:]) != (self.height, self.width) or indices.ndim != 3:
            raise ValueError(f"expected a long tensor of shape (batch, {self.height}, {self.width}), "
                             f"got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"indices must lie in [0, {self.num_codes})")

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_codes, H, W)``; those at position i depend only on indices before i."""
        self.check_grid(indices)
        return self._logits(indices)

    def _logits(self, indices: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without the range check (which reads the device): for grids already checked."""
        v = h = self.embed(indices).movedim(-1, 1)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def nll(self, indices: torch.Tensor) -> torch.Tensor:
        """-log p(grid) in nats, per example."""
        self.check_grid(indices)
        return self._nll(indices)

    def _nll(self, indices: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(indices), indices, reduction="none").sum(dim=(1, 2))

    def mean_nll(self, indices: torch.Tensor, batch_size: int = 1024) -> float:
        """Mean of :meth:`nll` over many grids, ``batch_size`` at a time, without gradients (one host read)."""
        self.check_grid(indices)
        batch_size = positive_int("batch_size", batch_size)
        with torch.no_grad():
            total = sum(self._nll(indices[s:s + batch_size]).sum() for s in range(0, len(indices), batch_size))
        return float(total) / len(indices)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` grids drawn position by position in raster order (H * W forward passes), on the prior's device.

        Each index is drawn by inverting the cumulative distribution at a uniform number; all ``H * W * n``
        uniforms are drawn up front from ``generator`` (on its own device, e.g. a CPU generator) and moved
        to the prior's device once, so the loop never returns to the host and the samples of a given
        generator do not depend on the device.
        """
        n = positive_int("n", n)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"`temperature` must be a number > 0, got {temperature!r}")
        device = self.embed.weight.device
        draw_on = generator.device if generator is not None else device
        uniforms = torch.rand(self.height * self.width, n, 1, generator=generator, device=draw_on).to(device)
        grid = torch.zeros(n, self.height, self.width, dtype=torch.long, device=device)
        for i in range(self.height):
            for j in range(self.width):
                probs = torch.softmax(self._logits(grid)[:, :, i, j].float() / temperature, dim=1)
                cdf = probs.cumsum(dim=1)
                # first k with cdf_k >= u (clamped: float rounding can leave cdf_K a hair below 1)
                drawn = (cdf < uniforms[i * self.width + j]).sum(dim=1).clamp_max(self.num_codes - 1)
                grid[:, i, j] = drawn
        return grid


def dependency_pattern(model: Callable[[torch.Tensor], torch.Tensor], height: int, width: int, num_codes: int,
                       seed: int = 0, atol: float = 1e-9) -> torch.Tensor:
    """Which positions each position's logits depend on, measured by perturbation.

    ``model`` maps a long grid ``(1, height, width)`` to logits ``(1, K, height, width)`` (a module is
    probed as a float64 copy, in eval mode). For every position j (raster order) the index there is
    changed by one; entry ``[i, j]`` of the returned ``(HW, HW)`` bool tensor is True when the logits at
    position i moved by more than ``atol``. An autoregressive model is False on and above the diagonal
    (no leak); one without a blind spot is True everywhere below it (every earlier position seen).
    """
    height, width = positive_int("height", height), positive_int("width", width)
    num_codes = positive_int("num_codes", num_codes, minimum=2)
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).double().eval()
    grid = torch.randint(0, num_codes, (1, height, width), generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device if isinstance(model, nn.Module) else grid.device
    grid = grid.to(device)
    with torch.no_grad():
        base = model(grid)
        pattern = torch.zeros(height * width, height * width, dtype=torch.bool)
        for j in range(height * width):
            changed = grid.clone()
            changed.view(-1)[j] = (changed.view(-1)[j] + 1) % num_codes
            moved = (model(changed) - base).abs().amax(dim=1).flatten()
            pattern[:, j] = (moved > atol).cpu()
    return pattern


def train_prior(prior: PixelCNNPrior, codes_train: torch.Tensor, codes_val: torch.Tensor, epochs: int,
                batch_size: int = 64, lr: float = 1e-3, seed: int = 0, keep_best: bool = True,
                max_batches: int | None = None, eval_batch_size: int = 1024) -> list[tuple[float, float]]:
    """Maximum likelihood with Adam; return (train, validation) negative log-likelihood in nats per grid, per epoch.

    With ``keep_best`` the prior ends with the parameters of the epoch with the lowest validation NLL (early
    stopping): a prior over few grids overfits quickly, and the validation grids, not the test grids, decide.
    ``max_batches`` cuts every epoch short (a rehearsal's few steps). The grids are range-checked once, here;
    the loss is accumulated on the device (one host read per epoch).
    """
    positive_int("epochs", epochs)
    if max_batches is not None:
        positive_int("max_batches", max_batches)
    prior.check_grid(codes_train)
    prior.check_grid(codes_val)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    curve: list[tuple[float, float]] = []
    best_state, best_val = None, math.inf
    for _ in range(epochs):
        prior.train()
        total, seen, batches = torch.zeros((), device=codes_train.device), 0, 0
        for batch in shuffled_batches(codes_train, batch_size, order):
            loss = prior._nll(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen, batches = total + loss.detach() * len(batch), seen + len(batch), batches + 1
            if max_batches is not None and batches >= max_batches:
                break
        prior.eval()
        val = prior.mean_nll(codes_val, eval_batch_size)
        curve.append((total.item() / seen, val))
        if keep_best and val < best_val:
            best_val, best_state = val, copy.deepcopy(prior.state_dict())
    if best_state is not None:
        prior.load_state_dict(best_state)
    prior.eval()
    return curve
