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
from kexue.torch.vq import Quantized, _code_counts


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

    def _batched(self, x: torch.Tensor, batch_size: int, fn):
        """Run ``fn`` on ``batch_size`` images at a time in eval mode (the quantiser's state untouched)."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        batch_size = positive_int("batch_size", batch_size)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return [fn(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)

    def encode_indices(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The code-index grids ``(B, H', W')`` of images, eq. vq-nearest, ``batch_size`` images at a time.

        Encoder and quantiser only (no decoder), in eval mode (the quantiser's state is untouched); peak
        memory is that of one batch, whatever ``len(x)`` is.
        """
        parts = self._batched(x, batch_size, lambda batch: self.quantizer(self.encoder(batch)).indices)
        return torch.cat(parts)

    def reconstruct(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Reconstructions ``decoder(z_q(x))`` of images, ``batch_size`` at a time, in eval mode."""
        return torch.cat(self._batched(x, batch_size, lambda batch: self(batch)[0]))

    def evaluate(self, x: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
        """Mean squared error per pixel, perplexity (eq. perplexity) and distinct codes used, over all of ``x``.

        Batched like :meth:`encode_indices`; code usage is counted by a scatter (no host read) over all batches,
        and the device is read once, at the end.
        """
        def one(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            recon, q = self(batch)
            counts = _code_counts(q.indices, self.quantizer.num_codes)  # no host read per batch
            return F.mse_loss(recon, batch, reduction="sum"), counts

        parts = self._batched(x, batch_size, one)
        squared = torch.stack([p[0] for p in parts]).sum()
        counts = torch.stack([p[1] for p in parts]).sum(0).double()
        p = counts / counts.sum()
        return {"mse": (squared / x.numel()).item(), "perplexity": (-torch.xlogy(p, p).sum()).exp().item(),
                "used_codes": float((counts > 0).sum().item())}

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images decoded from a code-index grid ``(B, H', W')``, e.g. a prior's samples."""
        codes = self.quantizer.lookup(indices)
        return self.decoder(codes.to(self.decoder[0].weight.dtype))


def train_vqvae(model: VQVAE, x_train: torch.Tensor, x_test: torch.Tensor, epochs: int, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0, max_batches: int | None = None,
                eval_batch_size: int = 1024) -> dict[str, list[float]]:
    """Train with Adam on mean squared error + quantiser loss; return per-epoch curves.

    Keys: ``train_mse`` (mean over the epoch's batches), ``test_mse``, ``perplexity`` and ``used_codes``
    (of the test set's code indices, in eval mode, :meth:`VQVAE.evaluate`), ``restarts`` (cumulative, if the
    quantiser counts them). ``max_batches`` cuts every epoch short (a rehearsal's few steps). The loss is
    accumulated on the device: one host read per epoch, not per step.
    """
    positive_int("epochs", epochs)
    if max_batches is not None:
        positive_int("max_batches", max_batches)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {k: [] for k in ("train_mse", "test_mse", "perplexity", "used_codes",
                                                       "restarts")}
    for _ in range(epochs):
        model.train()
        total, batches = torch.zeros((), device=x_train.device), 0
        for batch in shuffled_batches(x_train, batch_size, order):
            recon, q = model(batch)
            mse = F.mse_loss(recon, batch)
            opt.zero_grad()
            (mse + q.loss).backward()
            opt.step()
            total, batches = total + mse.detach(), batches + 1
            if max_batches is not None and batches >= max_batches:
                break
        scores = model.evaluate(x_test, eval_batch_size)
        history["train_mse"].append(total.item() / batches)
        history["test_mse"].append(scores["mse"])
        history["perplexity"].append(scores["perplexity"])
        history["used_codes"].append(scores["used_codes"])
        history["restarts"].append(float(getattr(model.quantizer, "restarts", 0)))
    model.eval()
    return history
