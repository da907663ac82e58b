"""SPARK: a reasoning policy that is also its own generative reward model, in plain PyTorch."""
