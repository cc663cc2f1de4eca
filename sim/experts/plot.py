"""Figure of a balancing run: load per expert over steps (heatmap, one layer) and the imbalance curve.

matplotlib's object API only (``Figure``, never ``pyplot``), so nothing global changes; the caller writes it.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from sim.experts.balancing import BalancingHistory


def balancing_figure(history: BalancingHistory, title: str = "") -> Figure:
    """Two panels: relative load of each expert of ``history.heatmap_layer`` per step (experts sorted by their
    load at step 0, 1.0 = the mean), and max/mean tokens per GPU per step (mean and worst over layers)."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    heat_ax, curve_ax = fig.subplots(2, 1, height_ratios=(3, 2), sharex=True)
    loads = history.heatmap_loads
    rel = loads / loads.mean(axis=-1, keepdims=True)
    order = np.argsort(-rel[0], kind="stable")
    steps = np.arange(history.steps + 1)
    span = float(np.clip(max(np.percentile(rel, 99), 1.0 / max(np.percentile(rel, 1), 1e-3), 2.0), 2.0, 100.0))
    image = heat_ax.imshow(np.clip(rel[:, order].T, 1.0 / span, span), aspect="auto", origin="lower",
                           cmap="RdBu_r", norm=LogNorm(vmin=1.0 / span, vmax=span),
                           extent=(-0.5, history.steps + 0.5, -0.5, rel.shape[1] - 0.5))
    fig.colorbar(image, ax=heat_ax, label="tokens / mean tokens per expert (log)")
    heat_ax.set_ylabel(f"expert of layer {history.heatmap_layer}\n(sorted by load at step 0)")
    heat_ax.set_title(title or f"expert load under policy '{history.policy}'")
    curve_ax.plot(steps, history.imbalance_by_step, label="mean over layers")
    curve_ax.plot(steps, history.imbalance_max_by_step, label="worst layer", linestyle="--")
    curve_ax.axhline(1.0, color="grey", linewidth=0.8)
    curve_ax.set_xlabel("training step")
    curve_ax.set_ylabel("max / mean tokens per GPU")
    curve_ax.set_ylim(bottom=0.9)
    curve_ax.legend()
    return fig
