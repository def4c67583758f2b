"""Evaluation and benchmark scripts, run as modules from the repository root:
``python -m eval.wer --help``."""
