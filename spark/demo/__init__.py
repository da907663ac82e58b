"""The CPU demo (`python -m spark.demo`): SPARK on two-digit subtraction with a 0.9M-parameter Qwen2."""
