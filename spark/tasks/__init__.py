"""The tasks one model is trained on (table.py) and the templates that render their prompts (prompts.py)."""
