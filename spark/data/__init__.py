"""Verifiable prompts: rows (question, answer, images) from JSONL, JSON or Parquet, the authors' chat rows, images."""
