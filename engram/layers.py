"""Backbone pieces: RMSNorm, rotary embeddings, causal attention (SDPA), SwiGLU MLP, hyper-connections.

Shapes: B batch, T time, D model width, H attention heads, G key/value heads, K head dim, F MLP hidden,
M hyper-connection streams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engram.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension; ``shape`` may carry leading per-branch axes, e.g. (M, D)."""

    def __init__(self, shape: int | tuple[int, ...], eps: float = 1e-6):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(shape))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x_BTHK: torch.Tensor, cos_TK: torch.Tensor, sin_TK: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head by position-dependent angles."""
    T = x_BTHK.shape[1]
    cos = cos_TK[:T, None, :].to(x_BTHK.dtype)
    sin = sin_TK[:T, None, :].to(x_BTHK.dtype)
    x1, x2 = x_BTHK.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BTHK = apply_rope(self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k_BTGK = apply_rope(self.wk(x_BTD).view(B, T, self.n_kv, self.head_dim), cos, sin)
        v_BTGK = self.wv(x_BTD).view(B, T, self.n_kv, self.head_dim)
        y = F.scaled_dot_product_attention(q_BTHK.transpose(1, 2), k_BTGK.transpose(1, 2), v_BTGK.transpose(1, 2),
                                           is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def sinkhorn(logits_MM: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Project exp(logits) onto (approximately) doubly stochastic matrices by alternate row/column scaling."""
    log_p = logits_MM
    for _ in range(iters):
        log_p = log_p - log_p.logsumexp(dim=-1, keepdim=True)
        log_p = log_p - log_p.logsumexp(dim=-2, keepdim=True)
    return log_p.exp()


class HyperConnection(nn.Module):
    """Static manifold-constrained hyper-connection around one sub-layer over M residual streams.

    Reads ``x = sum_m pre[m] * X_m`` for the sub-layer and writes ``X <- H_res X + post * f(x)`` with
    pre = sigmoid(.), post = 2 sigmoid(.) and H_res = Sinkhorn(exp(.)) doubly stochastic, so the streams neither
    blow up nor vanish. Initialised as a plain residual: H_res ~ identity, pre = 1/M each, post = 1. With
    ``mix=False`` there is no H_res: the output is only added (used for a single Engram fusion).
    """

    def __init__(self, streams: int, mix: bool = True):
        super().__init__()
        self.pre = nn.Parameter(torch.empty(streams))
        self.post = nn.Parameter(torch.empty(streams))
        self.res = nn.Parameter(torch.empty(streams, streams)) if mix else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        streams = self.pre.numel()
        self.pre.fill_(-math.log(streams - 1) if streams > 1 else 0.0)
        self.post.zero_()
        if self.res is not None:
            eye = torch.eye(streams)
            self.res.copy_((1 - eye) * -8.0)

    def read(self, x_BTMD: torch.Tensor) -> torch.Tensor:
        return torch.einsum("btmd,m->btd", x_BTMD, torch.sigmoid(self.pre).to(x_BTMD.dtype))

    def write(self, x_BTMD: torch.Tensor, y_BTD: torch.Tensor) -> torch.Tensor:
        if self.res is not None:
            x_BTMD = torch.einsum("nm,btmd->btnd", sinkhorn(self.res).to(x_BTMD.dtype), x_BTMD)
        return x_BTMD + (2 * torch.sigmoid(self.post)).to(y_BTD.dtype)[:, None] * y_BTD[:, :, None, :]
