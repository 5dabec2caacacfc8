"""A VAE with categorical latent variables, trainable with three gradient estimators (chapter 07).

The encoder gives q(z|x) = prod_l Cat(z_l; softmax(logits_l)) over ``n_latents`` variables of
``n_classes`` classes; the prior is uniform; the decoder is Bernoulli over binarised pixels. The ELBO
E_q[log p(x|z)] - KL(q || uniform) has its KL term in closed form (the KL of the *categorical* q, as in
Jang et al. 2017; Maddison et al. 2017 use a KL between relaxed densities instead); only the reconstruction
term needs a gradient estimator: Gumbel-Softmax, straight-through Gumbel, or REINFORCE with a leave-one-out
baseline over several samples per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kexue._checks import one_of, positive_int
from kexue.torch.batches import shuffled_batches
from kexue.torch.estimators import leave_one_out_baseline, score_function_surrogate
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
        """log p(x | z) per example, for one-hot or relaxed z of shape (..., n_latents, n_classes), x (..., n_inputs)."""
        logits = self.decoder(z.flatten(-2))
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dim=-1)

    def kl_to_uniform(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || uniform) per example: sum over latents of sum_k q_k log q_k + log K."""
        log_q = torch.log_softmax(logits, dim=-1)
        return (log_q.exp() * log_q).sum(dim=(-2, -1)) + self.n_latents * math.log(self.n_classes)

    def one_hot_sample(self, logits: torch.Tensor, samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete z ~ q (Gumbel-Max) as one-hot vectors, and log q(z|x) per example.

        With ``samples`` the results get a leading dimension of that many independent draws.
        """
        if samples is not None:
            logits = logits.expand(positive_int("samples", samples), *logits.shape)
        index = gumbel_max(logits.detach(), validate=False)
        log_q = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(dim=-1)
        return F.one_hot(index, self.n_classes).to(logits.dtype), log_q

    def elbo(self, x: torch.Tensor, batch_size: int = 10_000) -> torch.Tensor:
        """A one-sample estimate of the ELBO per example, with a discrete z (the objective itself), in batches."""
        batch_size = positive_int("batch_size", batch_size)
        out = []
        for rows in x.split(batch_size):
            logits = self.logits(rows)
            z, _ = self.one_hot_sample(logits)
            out.append(self.log_likelihood(z, rows) - self.kl_to_uniform(logits))
        return torch.cat(out)

    def surrogate_loss(self, x: torch.Tensor, estimator: str, tau: float | torch.Tensor = 1.0,
                       samples: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, reconstruction log-likelihood per example) for one of ``ESTIMATORS``.

        REINFORCE draws ``samples`` (>= 2) codes per example and gives each the mean reconstruction term of
        the others as its baseline (eq. ``leave-one-out``); the relaxations use one sample per example.
        """
        one_of("estimator", estimator, ESTIMATORS)
        logits = self.logits(x)
        kl = self.kl_to_uniform(logits)
        if estimator == "reinforce":
            z, log_q = self.one_hot_sample(logits, positive_int("samples", samples, minimum=2))
            recon = self.log_likelihood(z, x)  # (samples, batch); the decoder still gets its ordinary gradient
            encoder_term = score_function_surrogate(log_q, recon, leave_one_out_baseline(recon, dim=0))
            return -(recon.mean() + encoder_term - kl.mean()), recon.detach().mean(0)
        z = gumbel_softmax(logits, tau, hard=estimator == "straight-through", validate=False)
        recon = self.log_likelihood(z, x)
        return -(recon - kl).mean(), recon.detach()


def train_categorical_vae(model: CategoricalVAE, x_train: torch.Tensor, x_test: torch.Tensor, estimator: str,
                          epochs: int, batch_size: int = 64, lr: float = 1e-3,
                          tau: float | Callable[[int], float] = 1.0, seed: int = 0, samples: int = 4,
                          max_batches: int | None = None) -> list[tuple[float, float]]:
    """Train with Adam; return (train ELBO, test ELBO) per epoch, both with discrete samples.

    ``tau`` is a number or a schedule ``epoch -> tau`` (epochs count from 0); ``samples`` is REINFORCE's
    number of codes per example; ``max_batches`` cuts every epoch short (a rehearsal of the loop). The ELBOs
    stay on the model's device until the end (no host synchronisation inside the loop).
    """
    one_of("estimator", estimator, ESTIMATORS)
    positive_int("epochs", epochs)
    if max_batches is not None:
        positive_int("max_batches", max_batches)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    curve = []
    for epoch in range(epochs):
        temperature = tau(epoch) if callable(tau) else tau
        for step, batch in enumerate(shuffled_batches(x_train, batch_size, order)):
            if max_batches is not None and step >= max_batches:
                break
            loss, _ = model.surrogate_loss(batch, estimator, temperature, samples)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            curve.append(torch.stack((model.elbo(x_train).mean(), model.elbo(x_test).mean())))
    return [tuple(row) for row in torch.stack(curve).tolist()]
