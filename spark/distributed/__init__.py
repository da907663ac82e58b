"""What a run on many GPUs needs: process groups and FSDP2, checkpoints, preemption, metrics, FLOPs."""
