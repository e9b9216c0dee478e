"""The pre-LayerNorm transformer block shared by ``transformer-encoder`` and ``gpt-mini``.

Attention uses four separate ``nn.Linear`` projections (query, key, value, output) rather than
``nn.MultiheadAttention``, so every weight matrix is an ordinary Linear: prunable, traced and counted
like the rest (FLOPs of the attention products themselves count as dense). The MLP is
Linear(d, 4d) - ``nn.ReLU`` - Linear(4d, d), a ReLU module so activation density sees it (GPT-2 and BERT
use GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with separate q/k/v/out Linear projections."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``x`` (B, L, d); ``keep`` (B, L) bool: the keys that may be attended to (None: all)."""
        b, length, d = x.shape
        split = lambda t: t.view(b, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """``x + attention(LN(x))`` then ``x + MLP(LN(x))`` (the pre-LN form of GPT-2)."""

    def __init__(self, d_model: int, heads: int, hidden: int, dropout: float, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), keep))
        return x + self.drop(self.fc2(self.relu(self.fc1(self.ln2(x)))))


def positions(length: int, limit: int, device: torch.device) -> Tensor:
    if length > limit:
        raise ValueError(f"input of {length} tokens, longer than the model's seq_len {limit}")
    return torch.arange(length, device=device)
