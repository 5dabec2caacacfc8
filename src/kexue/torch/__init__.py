"""PyTorch implementations. Importing this module imports torch."""

from kexue.torch.accumulation import GradientAccumulation
from kexue.torch.lazy_adam import LazyAdam
from kexue.torch.lookahead import Lookahead
from kexue.torch.memory import activation_bytes, state_bytes

__all__ = ["GradientAccumulation", "LazyAdam", "Lookahead", "activation_bytes", "state_bytes"]
