"""Accuracy against published training runs: the cases of ``workloads/published/`` and ``sim validate``.

Each case file is a job file plus what a real run measured (``sim.validation.cases``); the simulated step is
turned into the source's own metric with the source's FLOP accounting (``sim.validation.metrics``: Narayanan
et al. 2021 Eq. 3, Megatron-LM's model-FLOP formula, tokens/s, MFU, GPU-hours per trillion tokens), and the
signed error ``predicted / measured - 1`` is reported per case, per family and overall
(``sim.validation.runner``, ``sim.validation.report``). Cases the simulator cannot express yet are listed with
the simulator's reason and excluded from the statistics.
"""

from sim.validation.cases import Case, Measured, load_cases, read_case_file, select
from sim.validation.metrics import METRICS, UNITS, megatron_model_flops, narayanan_eq3_flops, predict
from sim.validation.runner import CaseResult, run_cases, summarize

__all__ = ["METRICS", "UNITS", "Case", "CaseResult", "Measured", "load_cases", "megatron_model_flops",
           "narayanan_eq3_flops", "predict", "read_case_file", "run_cases", "select", "summarize"]
