"""The method: rollouts and rewards, recycling into judge and reflection prompts, packing, the losses, and the
alarms on a run's health."""
