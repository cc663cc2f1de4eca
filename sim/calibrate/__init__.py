"""Calibration by real kernel timings: tables of measured rates, their import from profiler traces, and the
harness that measures them with PyTorch.

What imports without torch: :mod:`sim.calibrate.table` (the table the cost model reads),
:mod:`sim.calibrate.interp` (log-log interpolation), :mod:`sim.calibrate.chrome_trace` and
:mod:`sim.calibrate.deepseek_trace` (profiler-trace import). Everything else (the reference model, the FLOP
cross-check, the timing harness) needs the optional extra ``calibrate`` (``pip install -e '.[calibrate]'``)
and imports torch inside itself; nothing here imports torch at ``import sim`` time.
"""
