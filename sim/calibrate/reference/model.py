"""The reference network: embedding, transformer blocks (MLA or MHA/GQA attention; dense FFN or DeepSeekMoE),
final norm and output head, and DeepSeek-V3's multi-token-prediction (MTP) modules.

MTP (tech report 2.2): module ``k`` combines the previous depth's hidden state ``h^{k-1}_i`` (the main model's
last block output for k = 1) with the embedding of token ``t_{i+k}``: ``eh_proj([RMSNorm(h); RMSNorm(emb)])``,
runs one transformer block of the last layer's kind, and predicts ``t_{i+k+1}`` through its own final norm and
the shared output head. To keep the arithmetic at exactly one MTP pass per token of the micro-batch (the
analytic convention of ``sim.model``), the model reads ``seq + 1 + n_mtp_layers`` tokens per sequence: every
depth has a target at every one of the ``seq`` positions. The loss is the main cross-entropy plus
``mtp_weight`` times the mean MTP cross-entropy (0.3 early in DeepSeek-V3's training, 4.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.calibrate.reference.layers import FFN, GQA, MLA, AttnImpl, Norm, rope_tables
from sim.calibrate.reference.moe import MoE, Router
from sim.config import ModelSpec


class Block(nn.Module):
    def __init__(self, m: ModelSpec, layer: int, impl: AttnImpl) -> None:
        super().__init__()
        self.attn_norm = Norm(m.dim, m.norm)
        self.attn = MLA(m, impl) if m.attention == "mla" else GQA(m, impl)
        self.ffn_norm = Norm(m.dim, m.norm)
        self.mlp: nn.Module = (MoE(m) if m.is_moe_layer(layer)
                               else FFN(m.dim, m.inter_dim, m.ffn_activation, m.bias))

    def forward(self, x: Tensor, batch: int, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.attn_norm(x), batch, rope)
        return x + self.mlp(self.ffn_norm(x))


class Head(nn.Module):
    """The output projection; ``weight`` may be borrowed (tied embeddings, MTP's shared head)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class MTP(nn.Module):
    def __init__(self, m: ModelSpec, impl: AttnImpl, head_weight: Tensor) -> None:
        super().__init__()
        self.enorm, self.hnorm = Norm(m.dim, m.norm), Norm(m.dim, m.norm)
        self.eh_proj = nn.Linear(2 * m.dim, m.dim, bias=False)
        nn.init.normal_(self.eh_proj.weight, std=0.02)
        self.block = Block(m, m.n_layers - 1, impl)
        self.final_norm = Norm(m.dim, m.norm)
        self.head = Head(head_weight)

    def forward(self, h: Tensor, emb: Tensor, batch: int, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h = self.block(self.eh_proj(torch.cat([self.hnorm(h), self.enorm(emb)], dim=-1)), batch, rope)
        return h, self.head(self.final_norm(h))


class ReferenceModel(nn.Module):
    """A DeepSeek-V3-style (or dense GQA/MHA) decoder built from ``ModelSpec``; ``forward(tokens)`` returns the
    training loss for ``tokens [batch, seq + 1 + n_mtp_layers]``."""

    def __init__(self, m: ModelSpec, impl: AttnImpl = "sdpa", mtp_weight: float = 0.3) -> None:
        super().__init__()
        if m.position_embedding == "alibi":
            raise NotImplementedError("ALiBi positions are not in the reference model")
        self.spec, self.mtp_weight = m, mtp_weight
        self.embed = nn.Embedding(m.vocab_size, m.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos_embed = nn.Embedding(m.max_seq_len, m.dim) if m.position_embedding == "learned" else None
        self.layers = nn.ModuleList(Block(m, i, impl) for i in range(m.n_layers))
        self.final_norm = Norm(m.dim, m.norm)
        head_weight: Tensor = (self.embed.weight if m.tie_word_embeddings
                               else nn.Parameter(torch.randn(m.vocab_size, m.dim) * 0.02))
        self.head = Head(head_weight)
        self.mtp = nn.ModuleList(MTP(m, impl, head_weight) for _ in range(m.n_mtp_layers))

    def rope_dim(self) -> int:
        m = self.spec
        return m.qk_rope_head_dim if m.attention == "mla" else m.attn_head_dim

    def forward(self, tokens: Tensor) -> Tensor:
        batch, total = tokens.shape
        seq = total - 1 - len(self.mtp)
        rope = rope_tables(seq, self.rope_dim())
        rope = (rope[0].to(tokens.device), rope[1].to(tokens.device))
        x = self._embed(tokens[:, :seq])
        for layer in self.layers:
            x = layer(x, batch, rope)
        loss = _xent(self.head(self.final_norm(x)), tokens[:, 1:seq + 1])
        if not len(self.mtp):
            return loss
        h, mtp_losses = x, []
        for depth, module in enumerate(self.mtp, start=1):
            h, logits = module(h, self._embed(tokens[:, depth:seq + depth]), batch, rope)
            mtp_losses.append(_xent(logits, tokens[:, depth + 1:seq + depth + 1]))
        return loss + self.mtp_weight * torch.stack(mtp_losses).mean()

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device))[None]
        return x.reshape(-1, x.shape[-1])

    def routers(self) -> list[Router]:
        return [mod for mod in self.modules() if isinstance(mod, Router)]

    def update_balance(self, gamma: float = 1e-3) -> None:
        """Apply the auxiliary-loss-free bias update to every router (after an optimizer step)."""
        for r in self.routers():
            r.update_bias(gamma)


def _xent(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), targets.reshape(-1))


def train_steps(model: ReferenceModel, tokens: Tensor, steps: int, lr: float = 3e-3,
                gamma: float = 1e-3) -> list[float]:
    """A few AdamW steps on one batch (memorization: the loss must fall); returns the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(tokens)
        loss.backward()
        opt.step()
        model.update_balance(gamma)
        losses.append(float(loss.detach()))
    return losses
