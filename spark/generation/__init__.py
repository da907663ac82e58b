"""Sampling from a checkpoint: the KV-cached sampler (sampler.py), its tensor-parallel shards (tensor_parallel.py)
and the chat model around it (chat.py)."""
