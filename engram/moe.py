"""DeepSeekMoE feed-forward: fine-grained routed SwiGLU experts, shared experts, top-k routing, no token dropping.

Balancing is auxiliary-loss-free by default: a per-expert ``bias`` buffer is added to the router scores for
*selection only* (gate weights come from the unbiased scores) and is moved toward uniform load by
:meth:`MoE.update_bias`, which the trainer calls before each optimizer step. An optional sequence-wise balance loss
is available through ``aux_loss_coef``.

Dispatch: the R = N*k (token, expert) pairs are sorted by expert (a stable sort of int32 ids; the group ends come
from ``searchsorted`` on the sorted ids, not ``bincount``, which reads the largest id on the host), the tokens
gathered in that order (in bf16 on the grouped path, so every routed copy is half the bytes), every expert's SwiGLU
run as grouped GEMMs over contiguous row groups (``torch._grouped_mm`` on Hopper GPUs, a loop over experts on the
CPU reference), and the outputs gathered back to (token, slot) order through the inverse permutation and summed
with the gate weights in float32. Both permutations are gathers in the backward too (:class:`_Dispatch`,
:class:`_Combine`): no scatter-add, no atomics. Every shape is static and nothing waits on the device, so the GPU
path runs under ``torch.compile(fullgraph=True)`` and CUDA graphs.

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
    """Grouped GEMMs (``torch._grouped_mm``): no host sync, no loop over experts.

    bf16 operands, int32 cumulative row offsets, right operands passed transposed (column-major: the fast path).
    W1 and W3 go through one GEMM as [E, 2F, D], so the gathered tokens are read once for both."""
    Fh = w1_EFD.shape[1]
    offs_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
    dtype = torch.bfloat16
    x = x_RD.to(dtype)
    w13_EHD = torch.cat([w1_EFD, w3_EFD], dim=1).to(dtype)
    h_RH = torch._grouped_mm(x, w13_EHD.transpose(-2, -1), offs=offs_E)
    a_RF = F.silu(h_RH[:, :Fh]) * h_RH[:, Fh:]
    y = torch._grouped_mm(a_RF, w2_EDF.to(dtype).transpose(-2, -1), offs=offs_E)
    return y.to(x_RD.dtype)


class _Dispatch(torch.autograd.Function):
    """Tokens into expert order, ``x_RD = x_ND[order_R // k]``. Backward by gathers as well: token n's gradient is
    the sum over its k slots of ``g_RD[inverse_R[n k + s]]`` (autograd's own would scatter-add with atomics)."""

    @staticmethod
    def forward(ctx, x_ND, order_R, inverse_R, k):
        ctx.save_for_backward(inverse_R)
        ctx.k = k
        return x_ND[order_R // k]

    @staticmethod
    def backward(ctx, g_RD):
        (inverse_R,) = ctx.saved_tensors
        g_ND = g_RD[inverse_R].view(-1, ctx.k, g_RD.shape[-1]).sum(1, dtype=torch.float32)
        return g_ND.to(g_RD.dtype), None, None, None


class _Combine(torch.autograd.Function):
    """Expert outputs back to (token, slot) order, ``y_NkD = y_RD[inverse_R]``; backward ``g_RD = g_R[order_R]``."""

    @staticmethod
    def forward(ctx, y_RD, order_R, inverse_R, k):
        ctx.save_for_backward(order_R)
        return y_RD[inverse_R].view(-1, k, y_RD.shape[-1])

    @staticmethod
    def backward(ctx, g_NkD):
        (order_R,) = ctx.saved_tensors
        return g_NkD.reshape(-1, g_NkD.shape[-1])[order_R], None, None, None


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
        # pair r = (token r // k, slot r % k); sorted by expert, stably; group ends by binary search
        sorted_R, order_R = torch.sort(selected_Nk.flatten().to(torch.int32), stable=True)
        ends_E = torch.searchsorted(sorted_R, torch.arange(1, E + 1, dtype=torch.int32, device=x_ND.device))
        counts_E = torch.diff(ends_E, prepend=ends_E.new_zeros(1))
        if self.training:
            with torch.no_grad():
                self.load += counts_E.to(self.load.dtype)
            if self.cfg.aux_loss_coef > 0:
                self.aux_loss = self._balance_loss(selected_Nk.view(B, T, k), scores_NE.view(B, T, E))
        inverse_R = torch.empty_like(order_R).scatter_(0, order_R, torch.arange(order_R.numel(), device=x_ND.device,
                                                                                 dtype=order_R.dtype))
        use_grouped = self.backend == "grouped" or (self.backend == "auto" and grouped_mm_available(x_ND.device))
        run = experts_grouped if use_grouped else experts_loop
        x_in = x_ND.to(torch.bfloat16) if use_grouped else x_ND  # the grouped GEMMs take bf16 anyway
        y_RD = run(_Dispatch.apply(x_in, order_R, inverse_R, k), counts_E, self.w1_EFD, self.w3_EFD, self.w2_EDF)
        y_NkD = _Combine.apply(y_RD, order_R, inverse_R, k)
        out_ND = (y_NkD.float() * weights_Nk.unsqueeze(-1)).sum(1).to(x_ND.dtype)
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
        # no "if load.sum() > 0" (it would wait for the device): an all-zero load has sign 0 and moves nothing
        if self.cfg.bias_update_rate > 0:
            self.bias += self.cfg.bias_update_rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()
