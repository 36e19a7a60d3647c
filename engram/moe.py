"""DeepSeekMoE feed-forward: fine-grained routed SwiGLU experts, shared experts, top-k routing, no token dropping.

Balancing is auxiliary-loss-free by default: a per-expert ``bias`` buffer is added to the router scores for
*selection only* (gate weights come from the unbiased scores) and is moved toward uniform load by
:meth:`MoE.update_bias`, which the trainer calls before each optimizer step. An optional sequence-wise balance loss
is available through ``aux_loss_coef``.

Shapes: B batch, T time, N = B*T tokens, D model width, E routed experts, F expert hidden, k top-k,
R = N*k routed (token, expert) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engram.config import MoEConfig
from engram.layers import SwiGLU


def experts_loop(x_RD: torch.Tensor, counts_E: torch.Tensor, w1_EFD: torch.Tensor, w3_EFD: torch.Tensor,
                 w2_EDF: torch.Tensor) -> torch.Tensor:
    """Reference expert computation over rows sorted by expert: one SwiGLU per non-empty group."""
    out = torch.empty_like(x_RD)
    start = 0
    for e, n in enumerate(counts_E.tolist()):
        if n:
            x = x_RD[start:start + n]
            out[start:start + n] = (F.silu(x @ w1_EFD[e].T) * (x @ w3_EFD[e].T)) @ w2_EDF[e].T
        start += n
    return out


def experts_grouped(x_RD: torch.Tensor, counts_E: torch.Tensor, w1_EFD: torch.Tensor, w3_EFD: torch.Tensor,
                    w2_EDF: torch.Tensor) -> torch.Tensor:
    """Grouped GEMMs (``torch._grouped_mm``): one launch per projection, no host sync, no loop over experts."""
    offs = torch.cumsum(counts_E, 0, dtype=torch.int32)
    dtype = torch.bfloat16
    x = x_RD.to(dtype)
    h1 = torch._grouped_mm(x, w1_EFD.to(dtype).transpose(-2, -1), offs=offs)
    h3 = torch._grouped_mm(x, w3_EFD.to(dtype).transpose(-2, -1), offs=offs)
    y = torch._grouped_mm(F.silu(h1) * h3, w2_EDF.to(dtype).transpose(-2, -1), offs=offs)
    return y.to(x_RD.dtype)


def grouped_mm_available(device: torch.device) -> bool:
    return (device.type == "cuda" and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(device) >= (9, 0))


class MoE(nn.Module):
    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        E, Fh = cfg.n_routed, cfg.expert_hidden
        self.router = nn.Linear(d_model, E, bias=False)
        self.w1_EFD = nn.Parameter(torch.empty(E, Fh, d_model))
        self.w3_EFD = nn.Parameter(torch.empty(E, Fh, d_model))
        self.w2_EDF = nn.Parameter(torch.empty(E, d_model, Fh))
        self.shared = SwiGLU(d_model, cfg.n_shared * Fh) if cfg.n_shared else None
        self.register_buffer("bias", torch.zeros(E), persistent=True)
        self.register_buffer("load", torch.zeros(E), persistent=False)
        self.backend = "auto"  # "auto" | "loop" | "grouped"
        self.aux_loss: torch.Tensor | None = None

    def route(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (selected experts [N,k], gate weights [N,k], unbiased scores [N,E]) in float32."""
        logits = self.router(x_ND).float()
        scores = torch.sigmoid(logits) if self.cfg.score_func == "sigmoid" else torch.softmax(logits, dim=-1)
        selected = torch.topk(scores + self.bias, self.cfg.top_k, dim=-1).indices
        weights = scores.gather(-1, selected)
        if self.cfg.score_func == "sigmoid":
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
        return selected, weights * self.cfg.route_scale, scores

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(-1, D)
        selected_Nk, weights_Nk, scores_NE = self.route(x_ND)
        E, k = self.cfg.n_routed, self.cfg.top_k
        flat_R = selected_Nk.flatten()
        counts_E = torch.bincount(flat_R, minlength=E)
        if self.training:
            with torch.no_grad():
                self.load += counts_E.to(self.load.dtype)
            if self.cfg.aux_loss_coef > 0:
                self.aux_loss = self._balance_loss(selected_Nk.view(B, T, k), scores_NE.view(B, T, E))
        order_R = torch.argsort(flat_R, stable=True)
        token_R = order_R // k
        x_RD = x_ND[token_R]
        use_grouped = self.backend == "grouped" or (self.backend == "auto" and grouped_mm_available(x_ND.device))
        run = experts_grouped if use_grouped else experts_loop
        y_RD = run(x_RD, counts_E, self.w1_EFD, self.w3_EFD, self.w2_EDF)
        y_RD = y_RD * weights_Nk.flatten()[order_R].unsqueeze(-1).to(y_RD.dtype)
        out_ND = torch.zeros_like(x_ND).index_add_(0, token_R, y_RD)
        if self.shared is not None:
            out_ND = out_ND + self.shared(x_ND)
        return out_ND.view(B, T, D)

    def _balance_loss(self, selected_BTk: torch.Tensor, scores_BTE: torch.Tensor) -> torch.Tensor:
        """Sequence-wise balance loss: coef * sum_e f_e * P_e, averaged over sequences (DeepSeek-V3)."""
        B, T, k = selected_BTk.shape
        E = self.cfg.n_routed
        hits = torch.zeros(B, E, device=scores_BTE.device).scatter_add_(
            1, selected_BTk.reshape(B, -1), torch.ones(B, T * k, device=scores_BTE.device))
        f_BE = hits * E / (k * T)
        p_BE = (scores_BTE / scores_BTE.sum(-1, keepdim=True)).mean(1)
        return self.cfg.aux_loss_coef * (f_BE * p_BE).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self) -> None:
        """Move each expert's selection bias toward the mean load by ``bias_update_rate``; reset the counts."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.load)
        if self.cfg.bias_update_rate > 0 and self.load.sum() > 0:
            self.bias += self.cfg.bias_update_rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()
