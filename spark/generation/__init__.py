"""Sampling from a checkpoint: the KV-cached sampler (sampler.py) and the chat model around it (chat.py)."""
