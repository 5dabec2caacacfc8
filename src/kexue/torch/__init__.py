"""PyTorch implementations. Importing this module imports torch."""

from kexue.torch.accumulation import GradientAccumulation
from kexue.torch.memory import activation_bytes, state_bytes

__all__ = ["GradientAccumulation", "activation_bytes", "state_bytes"]
