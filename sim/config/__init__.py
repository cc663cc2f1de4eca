"""The scenario model: frozen, validated descriptions of a model, the hardware, the layout and the job.

One module per part (``model``, ``hardware``, ``parallel``, ``experts``, ``job``) and ``scenario`` for the
whole with its cross-field rules; everything is re-exported here.
"""

from sim.config.base import Frozen
from sim.config.experts import ExpertLoadSpec
from sim.config.hardware import AttentionCurve, ClusterSpec, GpuEfficiency, GpuSpec, NodeSpec, PeakTflops
from sim.config.job import BatchRamp, TrainingPhase, TrainingSpec
from sim.config.model import ModelSpec
from sim.config.parallel import ParallelSpec, PrecisionSpec
from sim.config.run import EnergySpec, MeasuredSpec, MeasuredStage, OverheadSpec, PhaseSpec, RampSpec, RunSpec
from sim.config.scenario import Scenario, evolve
from sim.config.software import SoftwareSpec

__all__ = ["AttentionCurve", "BatchRamp", "ClusterSpec", "EnergySpec", "ExpertLoadSpec", "Frozen", "GpuEfficiency",
           "GpuSpec", "MeasuredSpec", "MeasuredStage", "ModelSpec", "NodeSpec", "OverheadSpec", "ParallelSpec",
           "PeakTflops", "PhaseSpec", "PrecisionSpec", "RampSpec", "RunSpec", "Scenario", "SoftwareSpec",
           "TrainingPhase", "TrainingSpec", "evolve"]
