"""Expert popularity: the affinity model behind every routing decision in ``sim.experts``.

The affinity model (an assumption of this simulator; DeepSeek publishes no router statistics):

- In MoE layer ``l`` every routed expert ``e`` has a popularity share ``w[l, e]`` (``sum_e w = 1``).
- Token ``t``'s router logit for expert ``e`` is ``log w[l, e] + G[t, e]`` with ``G`` iid standard Gumbel noise.
  Without a bias and with top-1 routing this makes ``w`` exactly the probability of being a token's first
  choice (the Gumbel-max property); top-k routing then takes the k largest. The affinity fed to the gate is
  ``sigmoid(logit)`` (DeepSeek-V3) or ``softmax(logit)`` (DeepSeek-V2, Mixtral), see ``sim.experts.routing``.
- Skew sets ``w``: ``balanced`` gives ``1/E``; ``zipf`` gives the expert of popularity rank ``r`` a share
  proportional to ``r**-zipf_exponent``, ranks shuffled independently per layer; ``dirichlet`` draws ``w`` from a
  symmetric Dirichlet with ``dirichlet_concentration`` per layer; ``histogram`` reads recorded loads (CSV) and
  solves for the ``w`` whose routed loads without a bias reproduce them (``popularity_from_loads``).
- Drift: after each step ``log w`` takes a Gaussian random-walk step of standard deviation ``drift_per_step``
  per expert, then ``w`` is renormalised.
- Auxiliary loss (policy ``aux``): modelled as reduced skew, ``w_aux ~ w ** (1 - aux_skew_reduction)``. This is
  an assumption: the sequence-wise balance loss of the V3 tech report (section 2.1.2, alpha = 0.0001) pushes
  routing towards uniform, but no published number gives the residual skew; 0.5 is a placeholder, not a fit.
  With ``aux_loss_alpha = 0`` there is no auxiliary loss and no reduction.

Randomness comes only from ``numpy.random.default_rng((seed, layer, purpose))``: a layer's popularity does not
depend on which other layers are simulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sim.config import ExpertLoadSpec
from sim.errors import SimInputError

FloatArray = NDArray[np.float64]

_PURPOSE_SKEW = 1
_PURPOSE_DRIFT = 2


def layer_rng(seed: int, layer: int, purpose: int, step: int = 0) -> np.random.Generator:
    """The generator for one layer, purpose and step: independent of every other layer."""
    return np.random.default_rng((seed % 2**63, layer, purpose, step))


def base_popularity(spec: ExpertLoadSpec, num_experts: int, layer: int) -> FloatArray:
    """Popularity shares ``w`` (sum 1) of one layer for the skews that need no file."""
    if spec.skew == "balanced":
        return np.full(num_experts, 1.0 / num_experts)
    rng = layer_rng(spec.seed, layer, _PURPOSE_SKEW)
    if spec.skew == "zipf":
        ranks = np.arange(1, num_experts + 1, dtype=np.float64)
        w = ranks ** -spec.zipf_exponent
        w = w[rng.permutation(num_experts)]
    elif spec.skew == "dirichlet":
        w = rng.dirichlet(np.full(num_experts, spec.dirichlet_concentration))
        w = np.maximum(w, 1e-300)
    else:
        raise ValueError(f"skew {spec.skew!r} needs a histogram file")
    return w / w.sum()


def popularity_from_loads(loads: FloatArray, k: int) -> FloatArray:
    """Popularity ``w`` whose expected top-k loads without a bias equal ``loads`` (last axis = experts).

    Under the mean-field router of ``sim.experts.fluid`` an expert's selection probability at zero bias is
    ``1 - exp(-w * c)`` for a per-layer constant ``c`` (sigmoid and softmax gates alike), so
    ``w ~ -log(1 - p)`` with ``p = k * load / sum(load)``. ``p`` is clipped to [1e-9, 1 - 1e-9]: a histogram
    cannot give one expert more than every token.
    """
    loads = np.asarray(loads, dtype=np.float64)
    total = loads.sum(axis=-1, keepdims=True)
    p = np.clip(k * loads / np.where(total > 0, total, 1.0), 1e-9, 1 - 1e-9)
    w = -np.log1p(-p)
    return w / w.sum(axis=-1, keepdims=True)


def read_histogram(path: str, layers: Sequence[int], moe_layers: Sequence[int], num_experts: int) -> FloatArray:
    """Loads per (requested layer, expert) from a CSV.

    Two layouts: long, with columns ``layer``, ``expert``, ``load`` (``layer`` is the model's layer id); or wide,
    one row per MoE layer in model order and one numeric column per expert (a header row is optional).
    """
    file = Path(path)
    if not file.is_file():
        raise SimInputError(f"no such file: {path}", field="experts.histogram")
    try:
        import pandas as pd  # heavy; only histogram skew reads a CSV

        frame = pd.read_csv(file)
    except (ValueError, OSError) as e:
        raise SimInputError(f"cannot read {path}: {e}", field="experts.histogram") from None
    if {"layer", "expert", "load"} <= set(frame.columns):
        table = frame.pivot_table(index="layer", columns="expert", values="load", aggfunc="sum", fill_value=0.0)
        by_layer = {int(i): table.loc[i].to_numpy(dtype=np.float64) for i in table.index}
        width = table.shape[1]
    else:
        if all(_is_number(c) for c in frame.columns):  # no header row: the first row is data
            frame = pd.read_csv(file, header=None)
        rows = frame.to_numpy(dtype=np.float64)
        by_layer = {layer: rows[i] for i, layer in enumerate(moe_layers) if i < len(rows)}
        width = rows.shape[1]
    if width != num_experts:
        raise SimInputError(f"{path} has {width} experts per layer; the model has {num_experts}",
                            field="experts.histogram")
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise SimInputError(f"{path} has no loads for layers {missing[:5]}", field="experts.histogram")
    return np.stack([by_layer[layer] for layer in layers])


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


class PopularityWalk:
    """Per-layer popularity over steps: the skew's shares, moved by the drift random walk after each step."""

    def __init__(self, spec: ExpertLoadSpec, k: int, layers: Sequence[int], moe_layers: Sequence[int],
                 num_experts: int) -> None:
        self.spec = spec
        if spec.skew == "histogram":
            loads = read_histogram(str(spec.histogram), layers, moe_layers, num_experts)
            w = popularity_from_loads(loads, k)
        else:
            w = np.stack([base_popularity(spec, num_experts, layer) for layer in layers])
        self.log_w: FloatArray = np.log(w)
        self._rngs = [layer_rng(spec.seed, layer, _PURPOSE_DRIFT) for layer in layers]

    def shares(self, policy: str) -> FloatArray:
        """Current popularity [layer, expert] as the router sees it under ``policy``."""
        shrink = self.spec.aux_skew_reduction if policy == "aux" and self.spec.aux_loss_alpha > 0 else 0.0
        log_w = self.log_w * (1.0 - shrink)
        w = np.exp(log_w - log_w.max(axis=-1, keepdims=True))
        return w / w.sum(axis=-1, keepdims=True)

    def advance(self) -> None:
        """One step of drift (nothing when ``drift_per_step`` is 0)."""
        sd = self.spec.drift_per_step
        if sd > 0:
            noise = np.stack([rng.standard_normal(self.log_w.shape[1]) for rng in self._rngs])
            self.log_w = self.log_w + sd * noise
