"""The local backend: Tinker's client surface, offline, on PyTorch + transformers + peft."""

from .sampling import LocalSamplingClient
from .service import LocalServiceClient
from .training import LocalTrainingClient

__all__ = ["LocalSamplingClient", "LocalServiceClient", "LocalTrainingClient"]
