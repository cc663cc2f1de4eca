"""The PyTorch reference network (needs torch): DeepSeek-V3-style MLA + DeepSeekMoE + MTP, or dense MHA/GQA,
built from the same :class:`~sim.config.ModelSpec` the simulator reads. Importable without CUDA."""

from sim.calibrate.reference.model import ReferenceModel, train_steps

__all__ = ["ReferenceModel", "train_steps"]
