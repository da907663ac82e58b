"""The rule verifier, split by concern (being moved here from spark/verifier.py)."""
