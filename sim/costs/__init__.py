"""Seconds for each operator on one GPU: ``kernels`` (GEMMs, attention, memory-bound kernels, with
calibration), ``ops`` (a model op under the parallel layout), ``calibration`` (which table applies)."""
