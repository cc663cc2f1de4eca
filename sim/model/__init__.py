"""Architecture arithmetic: ops, parameters, FLOPs, pipeline placement and memory (pure functions)."""
