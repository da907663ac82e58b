"""What a run on many GPUs needs: process groups and FSDP2, the sampler's pieces from FSDP shards, checkpoints,
preemption, metrics, FLOPs."""
