"""Expected expert loads: the mean-field (large-batch) limit of top-k routing under the affinity model.

Why a mean field: a DeepSeek-V3 step routes 62.9M tokens per layer (15,360 x 4,096) and every all-to-all
carries the 262,144 tokens of 64 data-parallel ranks, so per-expert loads are within ~1% of their expectation;
that expectation is what the bias dynamics and the step time need. Estimating it by routing a token sample
costs ~20 us per token (``route`` plus the Gumbel draws, measured on one core) and needs ~10^5 tokens per layer
for 1% per expert (measured: 9% per-expert error with 4,096 iid tokens, 5% with a Latin-hypercube sample):
hopeless for 58 layers x 1,000 steps. The mean field costs a few vector operations per layer and step.

The model. Token t selects expert e when its selection score ``X_te = f(log w_e + G_te) + b_e`` exceeds a
threshold ``tau`` shared by every token of the layer; ``tau`` is solved so that a token selects ``k`` experts on
average: ``sum_e P(X_e > tau) = k``. With Gumbel noise G the probabilities are closed-form:

- sigmoid gate (f = sigmoid, bias added to the score): ``P_e = 1 - exp(-w_e (1 - y) / y)``, ``y = tau - b_e``
  (``P_e = 1`` for ``y <= 0``, ``0`` for ``y >= 1``);
- softmax gate (bias added to the logit): ``P_e = 1 - exp(-w_e exp(b_e - tau))``.

Loads are renormalised so that each token counts exactly k routed experts. Approximations: the per-token
threshold is replaced by its mean, and the group limit (node-limited routing) is not modelled here; it is
honoured where it matters most for traffic, the nodes each token reaches (``sim.experts.fanout``). Measured
against the exact gate (``sim.experts.routing.route``; 60,000 sampled tokens, 256 experts, top-8, zero bias,
Zipf exponents 0.3 / 0.5 / 1.0):

- plain top-8 (no group limit): per-expert loads within 1.4-2.4% median (7-17% worst, on the least loaded
  experts), per-GPU max/mean within 0.5%;
- V3's node-limited gate: per-GPU max/mean within 1.6% (1.774 vs 1.802, 2.809 vs 2.855, 7.100 vs 7.115), but
  single GPUs differ by 2-16% median and the node max/mean is underestimated (1.13 vs 1.16, 1.26 vs 1.33,
  1.76 vs 1.92): the group limit packs tokens onto the nodes of popular experts;
- bias values belong to the model: after 1,500 bias steps the mean field is balanced (GPU max/mean 1.007 at
  Zipf 0.5, 1.019 at 1.0); the same biases in the exact node-limited gate give 1.08 and 1.19 (plain top-8:
  1.03 and 1.08; sampling floor 1.02). The exact gate's own dynamics settle at other biases.
- the dynamics themselves: the bias update run token by token through the exact node-limited gate (16,000
  sampled tokens, V3 layer 3, Zipf 1.0, gamma 0.001) falls 6.53 / 3.76 / 2.22 / 1.58 at steps 0 / 100 / 200 /
  300, the mean field 6.70 / 3.97 / 2.32 / 1.56. With 32 experts and top-4 the gap grows to ~13%
  (``tests/experts/test_balancing.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
ProbFn = Callable[[FloatArray], tuple[FloatArray, FloatArray]]


def _sigmoid_probs(w: FloatArray, bias: FloatArray) -> ProbFn:
    def probs(tau: FloatArray) -> tuple[FloatArray, FloatArray]:
        y = tau[..., None] - bias
        inside = (y > 0) & (y < 1)
        ys = np.where(inside, y, 0.5)
        z = w * (1 - ys) / ys
        ez = np.exp(-z)
        p = np.where(inside, -np.expm1(-z), np.where(y <= 0, 1.0, 0.0))
        dp = np.where(inside, -ez * w / (ys * ys), 0.0)
        return p, dp
    return probs


def _softmax_probs(w: FloatArray, bias: FloatArray) -> ProbFn:
    log_c = np.log(w) + bias

    def probs(tau: FloatArray) -> tuple[FloatArray, FloatArray]:
        z = np.exp(np.minimum(log_c - tau[..., None], 700.0))
        ez = np.exp(-z)
        return -np.expm1(-z), -ez * z
    return probs


def _brackets(w: FloatArray, bias: FloatArray, score_func: str) -> tuple[FloatArray, FloatArray]:
    if score_func == "sigmoid":
        return bias.min(axis=-1), bias.max(axis=-1) + 1.0
    log_c = np.log(w) + bias
    return log_c.min(axis=-1) - 50.0, log_c.max(axis=-1) + 50.0


def expected_selection(w: FloatArray, bias: FloatArray, k: int, score_func: str,
                       tau0: FloatArray | None = None, tol: float = 1e-10,
                       max_iter: int = 100) -> tuple[FloatArray, FloatArray]:
    """Mean-field selection probabilities [..., E] (each row sums to k) and the thresholds tau [...].

    ``w``: popularity shares [..., E]; ``bias`` broadcastable to it; ``tau0``: a warm start (the previous step's
    thresholds). Safeguarded Newton: bisection whenever a Newton step leaves the bracket.
    """
    w = np.asarray(w, dtype=np.float64)
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), w.shape)
    probs = _sigmoid_probs(w, bias) if score_func == "sigmoid" else _softmax_probs(w, bias)
    lo, hi = _brackets(w, bias, score_func)
    tau = (lo + hi) / 2 if tau0 is None else np.clip(tau0, lo, hi)
    p, dp = probs(tau)
    for _ in range(max_iter):
        f = p.sum(axis=-1) - k
        if np.all(np.abs(f) <= tol * k):
            break
        lo = np.where(f > 0, tau, lo)
        hi = np.where(f < 0, tau, hi)
        df = dp.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = tau - f / df
        ok = np.isfinite(step) & (step > lo) & (step < hi)
        tau = np.where(ok, step, (lo + hi) / 2)
        p, dp = probs(tau)
    p = p * (k / p.sum(axis=-1, keepdims=True))
    return p, tau


def equal_shares(shape: tuple[int, ...], k: int) -> FloatArray:
    """Exactly balanced selection probabilities: k / E for every expert."""
    return np.full(shape, k / shape[-1])
