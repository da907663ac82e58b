"""Qwen2.5 (and Qwen2.5-VL) in plain PyTorch, with Hugging Face checkpoint I/O."""

from spark.models.attention import Packing
from spark.models.checkpoint import CheckpointError, load_model, save_model
from spark.models.qwen2 import ModelConfig, Qwen2
from spark.models.qwen2_vl import ImageTokenError, Qwen2_5_VL, VisionConfig

__all__ = ["CheckpointError", "ImageTokenError", "ModelConfig", "Packing", "Qwen2", "Qwen2_5_VL", "VisionConfig",
           "load_model", "save_model"]
