"""Synthetic records drawn from known laws, to prove the fitters before real data reaches them (DESIGN.md, style
habit 11) and to give tests and demos complete, valid records.

Every simulator returns run-record dicts with all of ``engram_lab.records.RUN_FIELDS``; :func:`write_sweep` puts
them (and eval and probe records) on disk in the layout the loader reads. The default laws carry the paper's
magnitudes (PAPER.md sections 1, 2, 4) only so that figures look like the paper's; nothing in the analysis reads
them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engram_lab.records import eval_path, probe_path, run_id, run_path
from engram_lab.files import write_atomic

CREATED = "2026-01-01T00:00:00+00:00"


def model_config(engram: dict | None = None, moe: dict | None = None, n_layers: int = 12) -> dict:
    """A resolved model config in the shape of ``engram.config.ModelConfig.to_dict()`` (small, plausible sizes).

    ``engram=None`` gives a pure-MoE model; pass a dict to override Engram fields (``{"variant": "overencoding"}``).
    """
    moe_cfg = {"n_routed": 16, "top_k": 2, "n_shared": 1, "expert_hidden": 256, "first_dense": 1}
    moe_cfg.update(moe or {})
    cfg = {"vocab_size": 4096, "d_model": 256, "n_layers": n_layers, "n_heads": 4, "n_kv_heads": None,
           "max_seq_len": 512, "rope_theta": 10000.0, "ffn_hidden": 768, "norm_eps": 1e-6, "tie_embeddings": False,
           "hc_mult": 1, "init_std": 0.02, "moe": moe_cfg, "engram": None}
    if engram is not None:
        cfg["engram"] = {"variant": "engram", "layers": [1], "orders": [2, 3], "heads": 8, "mem_dim": 256,
                         "rows": 4099, "gate": "sigmoid", "conv": True, "conv_kernel": 4, "conv_dilation": None,
                         "conv_init": "zero", "compress": True, "multi_branch": True, "control": "none",
                         "pad_id": 0, "seed": 0, "proj_bias": False, **engram}
    return cfg


def accounting(rho: float | None = 1.0, P_tot: float = 4.0e7, P_act: float = 4.0e6, engram_slots: int | None = None,
               row_dim: int = 16, top_k: int = 2, experts_at_rho1: int = 16, engram_layers=(),
               tokens: float = 1.0e8) -> dict:
    """An accounting block with the keys of ``engram.budget.Counts.as_record()`` plus tokens and total_flops."""
    P_sparse = P_tot - P_act
    r = 1.0 if rho is None else rho
    P_engram = (1 - r) * P_sparse
    slots = int(round(P_engram / row_dim)) if engram_slots is None else int(engram_slots)
    flops = 6.0 * P_act
    return {"P_tot": int(P_tot), "P_act": int(P_act), "P_sparse": int(P_sparse), "P_moe_sparse": int(r * P_sparse),
            "P_engram": int(P_engram), "rho": rho, "top_k": top_k,
            "experts": int(round(top_k + r * (experts_at_rho1 - top_k))),
            "engram_layers": list(engram_layers), "engram_slots": slots, "embedding": 4096 * 256, "head": 4096 * 256,
            "flops_per_token": flops / 3, "flops_per_token_no_attention": 0.9 * flops / 3, "seq_len": 512,
            "train_flops_per_token": flops, "params_engram_tables": slots * row_dim,
            "tokens": tokens, "total_flops": flops * tokens}


def make_run_record(*, sweep: str = "synthetic", experiment: str = "smoke", axes: dict | None = None, seed: int = 0,
                    status: str = "completed", val_loss: float | None = None, model: dict | None = None,
                    acct: dict | None = None, metrics: dict | None = None, reason: str | None = None,
                    diverged_step: int | None = None) -> dict:
    """A complete, valid run record (every field of RUN_FIELDS); its run_id hashes its config, axes and seed.

    ``val_loss=None`` means 2.0 for a completed run (which must have one) and no loss for a failed or diverged
    one; those also get a reason (and a diverged step) when none is given.
    """
    axes = dict(axes or {})
    model = model if model is not None else model_config(engram={})
    # A real config determines its axes; a simulated one names them itself, so that each point has its own id.
    config = {"model": model, "train": {"seed": seed, "lr": 3e-3, "batch_size": 32}, "data": {"kind": "synthetic"},
              "experiment": experiment, "sweep": sweep, "seed": seed, "axes": axes, "simulated_point": axes}
    if status == "completed" and val_loss is None:
        val_loss = 2.0
    m = {"train_loss": None if val_loss is None else val_loss - 0.02, "val_loss": val_loss,
         "val_loss_by_category": {} if val_loss is None else {"static": val_loss - 0.3, "dynamic": val_loss + 0.3},
         "val_curve": [] if val_loss is None else [[5e7, val_loss + 0.1], [1e8, val_loss]],
         "tokens_per_second": 1.0e5, "mfu": 0.3, "unigram_entropy": 7.5}
    m.update(metrics or {})
    if status != "completed" and reason is None:
        reason = "loss became NaN" if status == "diverged" else "CUDA out of memory"
    if status == "diverged" and diverged_step is None:
        diverged_step = 120
    rec = {"run_id": run_id(config), "sweep": sweep, "experiment": experiment, "axes": axes,
           "seed": seed, "status": status, "reason": reason, "diverged_step": diverged_step, "config": config,
           "accounting": acct if acct is not None else accounting(), "metrics": m,
           "checkpoint": None if status != "completed" else f"runs/ckpt/{seed}.ckpt", "wall_time_s": 600.0,
           "device": "cpu", "versions": {"python": "3.12", "torch": "2.6"}, "git_commit": "0" * 40,
           "created": CREATED}
    return rec


def make_eval_record(run: dict, task: str, metrics: dict, memory: str = "on") -> dict:
    """An eval record for ``run``: ``metrics`` maps a name to a value or to (value, stderr)."""
    ms = {k: {"value": v[0], "stderr": v[1]} if isinstance(v, tuple) else {"value": v, "stderr": None}
          for k, v in metrics.items()}
    return {"run_id": run["run_id"], "sweep": run["sweep"], "task": task, "task_version": 1, "num_fewshot": 0,
            "limit": None, "lm_eval_version": "0.4.5", "memory": memory, "metrics": ms,
            "checkpoint": run["checkpoint"], "created": CREATED}


# --- laws ---------------------------------------------------------------------------------------------------------


def quadratic_law(l_min: float, rho_star: float, curvature: float) -> Callable[[np.ndarray], np.ndarray]:
    """L(rho) = l_min + curvature * (rho - rho_star)²; a rho_star outside [0, 1] makes it monotone on the grid."""
    return lambda rho: l_min + curvature * (np.asarray(rho, float) - rho_star) ** 2


def split_quadratic_law(l_min: float, rho_star: float, left: float, right: float) -> Callable[[np.ndarray], np.ndarray]:
    """L(rho) = l_min + left * (rho - rho_star)² below rho_star, l_min + right * (rho - rho_star)² above: a U with
    its own curvature on each side (the asymmetric law of analysis.stats.U_MODELS), its minimum at rho_star."""
    def law(rho):
        d = np.asarray(rho, float) - rho_star
        return l_min + np.where(d < 0, left, right) * d * d
    return law


def linex_law(l_min: float, rho_star: float, scale: float, skew: float) -> Callable[[np.ndarray], np.ndarray]:
    """L(rho) = l_min + scale * (exp(skew d) - skew d - 1), d = rho - rho_star (Varian's LINEX loss): smooth, its
    minimum exactly at rho_star, the arm on the side of sign(skew) rising exponentially and the other about
    linearly. None of the fitted laws has this form, so it tests the law choice on a shape it was not built for."""
    def law(rho):
        d = np.asarray(rho, float) - rho_star
        return l_min + scale * (np.exp(skew * d) - skew * d - 1)
    return law


PAPER_LIKE_U = {"2e20": quadratic_law(1.8155, 0.78, 0.28), "6e20": quadratic_law(1.7105, 0.78, 0.29)}
DEFAULT_RHOS = tuple(np.round(np.linspace(0.1, 1.0, 10), 3))


def simulate_u_curve(rng: np.random.Generator, laws: dict[str, Callable] | None = None,
                     rhos: Iterable[float] = DEFAULT_RHOS, seeds: int = 1, noise: float = 0.0015,
                     seed_effect: float = 0.0, sweep: str = "synthetic-allocation") -> list[dict]:
    """Allocation runs: for each budget and rho, ``seeds`` runs with loss law(rho) + N(0, noise²).

    ``seed_effect`` adds to every run of a seed (within a budget) one offset drawn from N(0, seed_effect²), as a
    seed's data order and initialisation shift its loss at every rho alike."""
    laws = PAPER_LIKE_U if laws is None else laws
    out = []
    for budget, law in laws.items():
        scale = float(budget) / 2e20 if _is_number(budget) else 1.0
        # drawn only when asked for, so that the runs of earlier seeded calls stay as they were
        offset = rng.normal(0, seed_effect, seeds) if seed_effect else np.zeros(seeds)
        for rho in rhos:
            mean = float(law(rho))
            eng = None if rho >= 1 else {"layers": [1]}
            for s in range(seeds):
                acct = accounting(rho=float(rho), P_tot=4e7 * scale, P_act=4e6 * scale)
                out.append(make_run_record(sweep=sweep, experiment="allocation", seed=s,
                                           axes={"rho": float(rho), "budget": budget, "seed": s},
                                           val_loss=mean + float(offset[s]) + float(rng.normal(0, noise)),
                                           model=model_config(engram=eng), acct=acct))
    return out


PAPER_LIKE_MEMORY = {"engram": (1.950, 0.00697), "overencoding": (1.963, 0.00697)}


def simulate_power_law(rng: np.random.Generator, methods: dict[str, tuple[float, float]] | None = None,
                       slots: Iterable[float] = (2.58e5, 5.2e5, 1.3e6, 2.6e6, 5.2e6, 1e7), seeds: int = 1,
                       noise: float = 0.001, form: str = "power", baseline: float | None = None,
                       sweep: str = "synthetic-memory") -> list[dict]:
    """Memory-scaling runs. ``form="power"``: L = a S^(-alpha) times exp(N(0, noise²)); ``form="log_linear"``:
    L = a + b log10 S + N(0, noise²), with ``methods`` mapping a method name to (a, alpha) or (a, b).
    ``baseline`` adds no-memory runs (0 slots) at that loss."""
    methods = PAPER_LIKE_MEMORY if methods is None else methods
    out = []
    for method, (a, k) in methods.items():
        for S in slots:
            mean = a * S ** (-k) if form == "power" else a + k * np.log10(S)
            for s in range(seeds):
                e = float(rng.normal(0, noise))
                loss = mean * np.exp(e) if form == "power" else mean + e
                eng = {"variant": method if method in ("engram", "overencoding", "bigram_hash") else "engram",
                       "layers": [0] if method == "overencoding" else [1]}
                out.append(make_run_record(sweep=sweep, experiment="memory_scaling", seed=s,
                                           axes={"method": method, "rows": int(S), "seed": s}, val_loss=float(loss),
                                           model=model_config(engram=eng),
                                           acct=accounting(rho=None, engram_slots=int(S), P_tot=4e7 + 16 * S)))
    for s in range(seeds if baseline is not None else 0):
        out.append(make_run_record(sweep=sweep, experiment="memory_scaling", seed=s, axes={"method": "none", "seed": s},
                                   val_loss=baseline + float(rng.normal(0, noise)), model=model_config(engram=None),
                                   acct=accounting(rho=1.0, engram_slots=0)))
    return out


PAPER_LIKE_PLACEMENT = {(0,): 1.7725, (1,): 1.7705, (2,): 1.7735, (3,): 1.776, (4,): 1.779, (5,): 1.778,
                        (6,): 1.780, (7,): 1.781, (8,): 1.782, (9,): 1.7825, (10,): 1.783, (11,): 1.783,
                        (1, 5): 1.768}


def simulate_placement(rng: np.random.Generator, losses: dict[tuple, float] | None = None, seeds: int = 3,
                       noise: float = 0.001, sweep: str = "synthetic-placement") -> list[dict]:
    """Placement runs: for each layer tuple (0-based), ``seeds`` runs at its loss + N(0, noise²)."""
    losses = PAPER_LIKE_PLACEMENT if losses is None else losses
    out = []
    for layers, mean in losses.items():
        for s in range(seeds):
            out.append(make_run_record(sweep=sweep, experiment="placement", seed=s,
                                       axes={"layers": list(layers), "seed": s},
                                       val_loss=mean + float(rng.normal(0, noise)),
                                       model=model_config(engram={"layers": list(layers)}),
                                       acct=accounting(rho=0.8, engram_layers=layers)))
    return out


PAPER_LIKE_ABLATION = {"reference": 1.768, "no_multi_branch": 1.775, "no_compress": 1.773, "no_gate": 1.772,
                       "plus_4gram": 1.770, "no_conv": 1.769, "no_engram": 1.808}


def simulate_ablation(rng: np.random.Generator, losses: dict[str, float] | None = None, seeds: int = 3,
                      noise: float = 0.001, sweep: str = "synthetic-ablation") -> list[dict]:
    """Ablation runs: each switch (and "reference") at its loss + N(0, noise²), ``seeds`` runs each."""
    losses = PAPER_LIKE_ABLATION if losses is None else losses
    out = []
    for name, mean in losses.items():
        eng = None if name == "no_engram" else {"layers": [1, 5], "gate": "none" if name == "no_gate" else "sigmoid"}
        for s in range(seeds):
            out.append(make_run_record(sweep=sweep, experiment="ablation", seed=s,
                                       axes={"ablation": name, "seed": s}, val_loss=mean + float(rng.normal(0, noise)),
                                       model=model_config(engram=eng), acct=accounting(rho=0.8)))
    return out


PAPER_LIKE_LONG_CONTEXT = {"moe": {"niah_single": 100.0, "mq_niah": 84.2, "vt": 77.0},
                           "engram": {"niah_single": 99.3, "mq_niah": 97.0, "vt": 89.0}}


def simulate_long_context(rng: np.random.Generator, runs: list[dict], scores: dict | None = None,
                          stderr: float = 1.5, memory_off: bool = True) -> list[dict]:
    """Eval records of long-context tasks (scores in percent) for every completed run whose model label
    (moe for a run without Engram, else the variant) has scores; with ``memory_off`` also Engram-off evals."""
    scores = PAPER_LIKE_LONG_CONTEXT if scores is None else scores
    out = []
    for run in runs:
        eng = run["config"]["model"].get("engram")
        label = "moe" if eng is None else eng["variant"]
        if run["status"] != "completed" or label not in scores:
            continue
        for task, value in scores[label].items():
            v = float(np.clip(value + rng.normal(0, stderr), 0, 100))
            out.append(make_eval_record(run, task, {"acc": (v, stderr)}))
            if memory_off and eng is not None:
                out.append(make_eval_record(run, task, {"acc": (0.6 * v, stderr)}, memory="off"))
    return out


def simulate_probes(rng: np.random.Generator, run: dict, n_layers: int = 12, tokens: Iterable[str] | None = None,
                    label: str = "engram", other: str = "moe") -> list[dict]:
    """One probe record of each kind for ``run`` (labelled ``label``) and its twin ``other`` (a made-up run id):
    LogitLens of both, CKA of the pair (``run``'s layer i matching the twin's 1.6 i), gates firing at the end of
    multi-token phrases, and memory-off shares like the paper's (static knowledge keeps less than dynamic content)."""
    layers = list(range(n_layers))
    kl = [float(6.0 * np.exp(-0.35 * i) + abs(rng.normal(0, 0.05))) for i in layers]
    kl_other = [float(6.0 * np.exp(-0.25 * i) + abs(rng.normal(0, 0.05))) for i in layers]
    idx = np.arange(n_layers)
    shift = np.clip(1.6 * idx, 0, n_layers - 1)
    cka = np.clip(np.exp(-((shift[:, None] - idx[None, :]) ** 2) / 8.0) + rng.normal(0, 0.02, (n_layers, n_layers)),
                  0, 1)
    tokens = list(tokens or ["Alexander", " the", " Great", " led", " the", " Milky", " Way", " by", " the", " way"])
    gates = rng.uniform(0.0, 0.4, (2, len(tokens)))
    gates[:, [2, 6, 9]] = rng.uniform(0.8, 1.0, (2, 3))  # fire at the end of multi-token phrases
    ngrams = [{"ngram": "".join(tokens[i - 2:i + 1]), "ids": [i - 2, i - 1, i], "order": 3, "count": 5,
               "mean_gate": float(gates[:, i].mean()), "channel_means": gates[:, i].tolist()} for i in (2, 6, 9)]
    retained = {"static": 0.45, "dynamic": 0.9, "biography": 0.35, "arithmetic": 0.95}
    memory_rows = [{"name": name, "source": "validation", "group": "kind" if name in ("static", "dynamic") else
                    "category", "kind": "static" if share < 0.5 else "dynamic", "metric": "next-token accuracy",
                    "on": 0.6, "off": 0.6 * share, "retained": share, "n": 1000, "loss_on": 2.0, "loss_off": 2.5}
                   for name, share in retained.items()]
    twin = run_id({"twin of": run["run_id"]})
    common = {"sweep": run["sweep"], "checkpoint": f"runs/{run['run_id']}/model", "settings": {"tokens": 1000},
              "created": CREATED}
    alone = {**common, "run_id": run["run_id"], "label": label, "against": None, "against_label": None,
             "against_checkpoint": None}
    return [
        {**alone, "kind": "logit_lens", "data": {"layers": layers, "kl": kl}},
        {**alone, "run_id": twin, "label": other, "kind": "logit_lens", "data": {"layers": layers, "kl": kl_other}},
        {**alone, "kind": "cka", "against": twin, "against_label": other, "against_checkpoint": f"runs/{twin}/model",
         "data": {"rows": label, "cols": other, "matrix": cka.round(4).tolist(),
                  "best_match": cka.argmax(1).tolist(), "soft_alignment": shift.tolist(), "k": 5,
                  "n_tokens": 1000}},
        {**alone, "kind": "gate", "data": {"tokens": tokens, "channels": ["layer 1", "layer 5"],
                                           "gates": gates.round(4).tolist(), "top_ngrams": ngrams,
                                           "corpus_tokens": 1000}},
        {**alone, "kind": "memory_off", "data": {"rows": memory_rows}},
    ]


def write_sweep(results: str | Path, runs: Iterable[dict], evals: Iterable[dict] = (),
                probes: Iterable[dict] = ()) -> list[Path]:
    """Write records as real files in the layout of engram_lab/records.py (runs/, evals/ and probes/ per run)."""
    paths = [write_atomic(run_path(results, r["sweep"], r["run_id"]), r) for r in runs]
    paths += [write_atomic(eval_path(results, e["sweep"], e["run_id"], e["task"], e["memory"]), e) for e in evals]
    paths += [write_atomic(probe_path(results, p["sweep"], p["run_id"], p["kind"], p["against"]), p) for p in probes]
    return paths


def _is_number(s) -> bool:
    try:
        float(s)
    except (TypeError, ValueError):
        return False
    return True
