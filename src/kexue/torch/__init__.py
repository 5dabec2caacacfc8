"""PyTorch implementations. Importing this module imports torch."""

from kexue.torch.accumulation import GradientAccumulation
from kexue.torch.attention import SelfAttention
from kexue.torch.capture import capture
from kexue.torch.categorical_vae import CategoricalVAE, train_categorical_vae
from kexue.torch.ema import ExponentialMovingAverage
from kexue.torch.estimators import normal_rsample, score_function_surrogate
from kexue.torch.fsq import FiniteScalarQuantizer
from kexue.torch.gumbel import gumbel_from_uniform, gumbel_max, gumbel_softmax, probs_to_logits, sample_gumbel
from kexue.torch.lazy_adam import LazyAdam
from kexue.torch.lookahead import Lookahead
from kexue.torch.memory import activation_bytes, state_bytes
from kexue.torch.normalization import (NORM_VARIANTS, NoisyBatchNorm1d, NoisyBatchNorm2d, mlp_with_norm,
                                      vgg_with_norm)
from kexue.torch.seeded_dataset import SeededDataset, loader_batches
from kexue.torch.pixelcnn import MaskedConv2d, PixelCNNPrior, train_prior
from kexue.torch.vq import Quantized, VectorQuantizer, codebook_perplexity, nearest_code
from kexue.torch.vqvae import VQVAE, train_vqvae

__all__ = [
    "CategoricalVAE", "FiniteScalarQuantizer", "GradientAccumulation", "LazyAdam", "Lookahead", "NORM_VARIANTS", "NoisyBatchNorm1d",
    "NoisyBatchNorm2d", "mlp_with_norm", "vgg_with_norm", "activation_bytes", "gumbel_from_uniform",
    "gumbel_max", "gumbel_softmax", "normal_rsample", "probs_to_logits", "sample_gumbel", "score_function_surrogate",
    "state_bytes", "train_categorical_vae", "MaskedConv2d", "PixelCNNPrior", "train_prior", "Quantized",
    "VectorQuantizer", "codebook_perplexity", "nearest_code", "VQVAE", "train_vqvae", "ExponentialMovingAverage",
    "SeededDataset", "SelfAttention", "capture", "loader_batches",
]
