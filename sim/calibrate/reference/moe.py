"""DeepSeekMoE: a router with group-limited top-k and an auxiliary-loss-free balancing bias, routed experts and
shared experts.

The router follows DeepSeek-V3 ``inference/model.py`` ``Gate`` (commit 9b4e978): scores are the sigmoid (V3)
or softmax (V2) of ``x W_g^T``; the balancing bias is added for *selection only*; with ``n_expert_groups`` > 1
each group is scored by the sum of its top-2 biased scores (the largest score without a bias), the top
``n_limited_groups`` groups are kept and the rest masked; the top-k experts are chosen among them; the gating
weights are the unbiased scores of the chosen experts, normalized to sum 1 under sigmoid scoring, times
``route_scale``. The bias is updated after each step by ``gamma`` towards balance: lowered for overloaded
experts, raised for underloaded ones (tech report 2.1.2, auxiliary-loss-free load balancing).

Each expert is an :class:`~sim.calibrate.reference.layers.FFN` in ``experts``; tokens are gathered per expert
and multiplied by that expert's weights, so the arithmetic is exactly ``top-k`` rows per token (the analytic
``experts_up``/``experts_down`` ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.calibrate.reference.layers import FFN
from sim.config import ModelSpec


class Router(nn.Module):
    balance_bias: Tensor
    last_load: Tensor

    def __init__(self, m: ModelSpec) -> None:
        super().__init__()
        self.e, self.k = m.n_routed_experts, m.n_activated_experts
        self.groups, self.limited = m.n_expert_groups, m.n_limited_groups
        self.score_func, self.scale = m.score_func, m.route_scale
        self.weight = nn.Parameter(torch.randn(self.e, m.dim) * 0.02)
        self.register_buffer("balance_bias", torch.zeros(self.e), persistent=True)
        self.register_buffer("last_load", torch.zeros(self.e), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gating weights and expert indices, both ``[tokens, top-k]``."""
        logits = F.linear(x, self.weight)
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        original = scores
        biased = self.score_func == "sigmoid"
        if biased:
            scores = scores + self.balance_bias
        if self.groups > 1:
            grouped = scores.view(x.shape[0], self.groups, -1)
            if biased and grouped.shape[-1] >= 2:
                group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            else:
                group_scores = grouped.amax(dim=-1)
            keep = group_scores.topk(self.limited, dim=-1)[1]
            mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            scores = grouped.masked_fill(mask.unsqueeze(-1), float("-inf")).flatten(1)
        indices = scores.topk(self.k, dim=-1)[1]
        weights = original.gather(1, indices)
        if self.score_func == "sigmoid":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        with torch.no_grad():
            self.last_load.copy_(torch.bincount(indices.flatten(), minlength=self.e).to(self.last_load.dtype))
        return weights * self.scale, indices

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """Auxiliary-loss-free balancing: ``bias_i += gamma * sign(mean load - load_i)``."""
        load = self.last_load
        self.balance_bias.add_(gamma * torch.sign(load.mean() - load))


class MoE(nn.Module):
    def __init__(self, m: ModelSpec) -> None:
        super().__init__()
        self.router = Router(m)
        self.experts = nn.ModuleList(FFN(m.dim, m.moe_inter_dim, "swiglu") for _ in range(m.n_routed_experts))
        self.shared = FFN(m.dim, m.moe_inter_dim * m.n_shared_experts, "swiglu") if m.n_shared_experts else None

    def forward(self, x: Tensor) -> Tensor:
        weights, indices = self.router(x)
        flat = indices.flatten()
        token = torch.arange(x.shape[0], device=x.device).repeat_interleave(indices.shape[1])
        gate = weights.flatten()
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            sel = (flat == e).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            rows = token[sel]
            out = out.index_add(0, rows, expert(x[rows]) * gate[sel, None])
        if self.shared is not None:
            out = out + self.shared(x)
        return out
