"""sim: a cluster simulator and performance model for large-scale LLM training."""

__version__ = "0.1.0"
