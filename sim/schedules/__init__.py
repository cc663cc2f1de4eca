"""Pipeline schedules as data: per rank an ordered tuple of actions.

- :mod:`~sim.schedules.actions`: ``Phase``, ``Action``, ``Schedule``, the compact text form.
- :mod:`~sim.schedules.generators`: ``build_schedule(name, pp, num_microbatches, vpp=1)`` for gpipe, 1f1b,
  interleaved-1f1b, zb1p and (via :mod:`~sim.schedules.dualpipe`) dualpipe and dualpipev.
- :mod:`~sim.pipeline`: what each schedule requires of its layout.
- :mod:`~sim.schedules.validate`: ``validate(schedule)``, ``ScheduleError``.
- :mod:`~sim.schedules.listsched`: ``simulate(schedule, durations)``, a zero-latency list scheduler.
- :mod:`~sim.schedules.formulas`: published bubble formulas (test oracles).
- :mod:`~sim.schedules.grid`, :mod:`~sim.schedules.plot`: text grids and the Gantt chart.
"""
