"""A small convolutional VQ-VAE and its training loop (chapter 08).

encoder: image (B, C, H, W) -> z_e (B, D, H / 2^s, W / 2^s); quantiser: z_e -> z_q (straight-through);
decoder: z_q -> image. Loss: mean squared reconstruction error + the quantiser's loss (eq. vq-loss). Any
quantiser with the interface of :class:`kexue.torch.VectorQuantizer` (``dim``, ``num_codes``, ``lookup``,
forward returning :class:`kexue.torch.vq.Quantized`) fits, including :class:`FiniteScalarQuantizer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import positive_int
from kexue.torch.batches import shuffled_batches
from kexue.torch.vq import Quantized


class VQVAE(nn.Module):
    """Conv encoder with ``downsample`` stride-2 layers, a quantiser, and the mirror-image decoder."""

    def __init__(self, quantizer: nn.Module, in_channels: int = 1, hidden: int = 64, downsample: int = 1):
        super().__init__()
        if not all(hasattr(quantizer, a) for a in ("dim", "num_codes", "lookup")):
            raise TypeError("`quantizer` must provide `dim`, `num_codes` and `lookup` (see VectorQuantizer)")
        in_channels = positive_int("in_channels", in_channels)
        hidden = positive_int("hidden", hidden)
        self.downsample = positive_int("downsample", downsample, minimum=0)
        self.quantizer = quantizer
        down = [m for _ in range(downsample) for m in (nn.Conv2d(hidden, hidden, 4, 2, 1), nn.ReLU())]
        up = [m for _ in range(downsample) for m in (nn.ConvTranspose2d(hidden, hidden, 4, 2, 1), nn.ReLU())]
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), *down,
                                     nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, quantizer.dim, 1))
        self.decoder = nn.Sequential(nn.Conv2d(quantizer.dim, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), *up,
                                     nn.Conv2d(hidden, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """(reconstruction, quantiser output) for images ``(B, C, H, W)`` with H and W divisible by 2^downsample."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        if x.shape[2] % 2**self.downsample or x.shape[3] % 2**self.downsample:
            raise ValueError(f"height and width must be divisible by {2**self.downsample}, got {tuple(x.shape[2:])}")
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.quantized), q

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The code-index grid ``(B, H', W')`` of images, without touching the quantiser's state."""
        was_training = self.training
        self.eval()
        try:
            return self(x)[1].indices
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images decoded from a code-index grid ``(B, H', W')``, e.g. a prior's samples."""
        return self.decoder(self.quantizer.lookup(indices))


def train_vqvae(model: VQVAE, x_train: torch.Tensor, x_test: torch.Tensor, epochs: int, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0) -> dict[str, list[float]]:
    """Train with Adam on mean squared error + quantiser loss; return per-epoch curves.

    Keys: ``train_mse`` (mean over the epoch's batches), ``test_mse``, ``perplexity`` and ``used_codes``
    (of the test set's code indices, in eval mode), ``restarts`` (cumulative, if the quantiser counts them).
    """
    positive_int("epochs", epochs)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {k: [] for k in ("train_mse", "test_mse", "perplexity", "used_codes",
                                                       "restarts")}
    for _ in range(epochs):
        model.train()
        total, batches = 0.0, 0
        for batch in shuffled_batches(x_train, batch_size, order):
            recon, q = model(batch)
            mse = F.mse_loss(recon, batch)
            opt.zero_grad()
            (mse + q.loss).backward()
            opt.step()
            total, batches = total + mse.item(), batches + 1
        model.eval()
        with torch.no_grad():
            recon, q = model(x_test)
        history["train_mse"].append(total / batches)
        history["test_mse"].append(F.mse_loss(recon, x_test).item())
        history["perplexity"].append(q.perplexity.item())
        history["used_codes"].append(float(q.indices.unique().numel()))
        history["restarts"].append(float(getattr(model.quantizer, "restarts", 0)))
    return history
