"""A VAE with categorical latent variables, trainable with three gradient estimators (chapter 07).

The encoder gives q(z|x) = prod_l Cat(z_l; softmax(logits_l)) over ``n_latents`` variables of
``n_classes`` classes; the prior is uniform; the decoder is Bernoulli over binarised pixels. The ELBO
E_q[log p(x|z)] - KL(q || uniform) has its KL term in closed form; only the reconstruction term needs a
gradient estimator: Gumbel-Softmax, straight-through Gumbel, or REINFORCE with a moving-average baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import one_of, positive_int
from kexue.torch.batches import shuffled_batches
from kexue.torch.estimators import score_function_surrogate
from kexue.torch.gumbel import gumbel_max, gumbel_softmax

ESTIMATORS = ("gumbel-softmax", "straight-through", "reinforce")


class CategoricalVAE(nn.Module):
    """Encoder and decoder MLPs around ``n_latents`` categorical variables of ``n_classes`` classes."""

    def __init__(self, n_inputs: int, n_latents: int = 8, n_classes: int = 8, hidden: int = 128):
        super().__init__()
        self.n_inputs = positive_int("n_inputs", n_inputs)
        self.n_latents = positive_int("n_latents", n_latents)
        self.n_classes = positive_int("n_classes", n_classes, minimum=2)
        hidden = positive_int("hidden", hidden)
        self.encoder = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_latents * n_classes))
        self.decoder = nn.Sequential(nn.Linear(n_latents * n_classes, hidden), nn.ReLU(), nn.Linear(hidden, n_inputs))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).view(len(x), self.n_latents, self.n_classes)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per example, for one-hot or relaxed z of shape (batch, n_latents, n_classes)."""
        return -F.binary_cross_entropy_with_logits(self.decoder(z.flatten(1)), x, reduction="none").sum(dim=1)

    def kl_to_uniform(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || uniform) per example: sum over latents of sum_k q_k log q_k + log K."""
        log_q = torch.log_softmax(logits, dim=-1)
        return (log_q.exp() * log_q).sum(dim=(1, 2)) + self.n_latents * math.log(self.n_classes)

    def one_hot_sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A discrete sample z ~ q (Gumbel-Max) as one-hot vectors, and its log q(z|x) per example."""
        index = gumbel_max(logits.detach())
        log_q = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(dim=1)
        return F.one_hot(index, self.n_classes).to(logits.dtype), log_q

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of the ELBO per example, with a discrete z: the objective itself."""
        logits = self.logits(x)
        z, _ = self.one_hot_sample(logits)
        return self.log_likelihood(z, x) - self.kl_to_uniform(logits)

    def surrogate_loss(self, x: torch.Tensor, estimator: str, tau: float = 1.0,
                       baseline: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, reconstruction log-likelihood per example) for one of ``ESTIMATORS``."""
        one_of("estimator", estimator, ESTIMATORS)
        logits = self.logits(x)
        kl = self.kl_to_uniform(logits)
        if estimator == "reinforce":
            z, log_q = self.one_hot_sample(logits)
            recon = self.log_likelihood(z, x)  # the decoder still gets its ordinary gradient
            encoder_term = score_function_surrogate(log_q, recon, baseline)
            return -(recon.mean() + encoder_term - kl.mean()), recon.detach()
        z = gumbel_softmax(logits, tau, hard=estimator == "straight-through")
        recon = self.log_likelihood(z, x)
        return -(recon - kl).mean(), recon.detach()


def train_categorical_vae(model: CategoricalVAE, x_train: torch.Tensor, x_test: torch.Tensor, estimator: str,
                          epochs: int, batch_size: int = 64, lr: float = 1e-3, tau: float = 1.0,
                          seed: int = 0) -> list[tuple[float, float]]:
    """Train with Adam; return (train ELBO, test ELBO) per epoch, both with discrete samples.

    REINFORCE uses an exponential moving average (0.9) of the reconstruction term as its baseline.
    """
    one_of("estimator", estimator, ESTIMATORS)
    positive_int("epochs", epochs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    baseline, curve = None, []
    for _ in range(epochs):
        for batch in shuffled_batches(x_train, batch_size, order):
            loss, recon = model.surrogate_loss(batch, estimator, tau, 0.0 if baseline is None else baseline)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mean = recon.mean().item()
            baseline = mean if baseline is None else 0.9 * baseline + 0.1 * mean
        with torch.no_grad():
            curve.append((model.elbo(x_train).mean().item(), model.elbo(x_test).mean().item()))
    return curve
