"""What each rank runs, as tasks with durations: chunks per stage and micro-batch, overlapped pairs, the
step's tail, and the expert loads that size the MoE tasks.

- :mod:`~sim.program.tasks`: ``Task`` and ``Work``, the engine's input;
- :mod:`~sim.program.chunks`: ``Program`` builds each chunk's tasks from the cost model and the network;
- :mod:`~sim.program.pairs`: DualPipe's overlapped forward/backward pairs;
- :mod:`~sim.program.tail`: gradient synchronization, optimizer, parameter gather;
- :mod:`~sim.program.moe`: per MoE layer and micro-batch, what the busiest GPU of an EP group sees.
"""
