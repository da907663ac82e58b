"""Qwen2.5 (and Qwen2.5-VL) in plain PyTorch, with Hugging Face checkpoint I/O."""

from spark.models.checkpoint import CheckpointError, load_model, save_model
from spark.models.qwen2 import ModelConfig, Packing, Qwen2

__all__ = ["CheckpointError", "ModelConfig", "Packing", "Qwen2", "load_model", "save_model"]
