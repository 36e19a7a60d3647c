"""The plan table: what each trial of a sweep will be, before anything is submitted."""

from __future__ import annotations

from collections import Counter

from engram.budget import count
from engram.device import peak_flops
from experiments.train import plan_steps
from sweeps.spec import PlannedTrial, SweepSpec


def plan_rows(spec: SweepSpec, planned: list[PlannedTrial]) -> list[dict]:
    peak = peak_flops(spec.launch.gpu_name)
    rows = []
    for p in planned:
        t = p.trial
        c = count(t.model, seq_len=t.data.seq_len)
        _, tokens = plan_steps(t)
        flops = tokens * c.train_flops_per_token
        rows.append({
            "run_id": p.run_id, "point": p.label(), "grid_point": grid_point(spec, p), "seed": t.seed, "rho": c.rho,
            "experts": c.experts, "engram_slots": c.engram_slots, "P_tot": c.P_tot, "P_act": c.P_act, "tokens": tokens,
            "total_flops": flops, "gpu_hours": flops / (peak * spec.launch.assumed_mfu) / 3600,
        })
    return rows


def grid_point(spec: SweepSpec, p: PlannedTrial) -> str:
    """The trial's point without its seed: the trials of one grid point differ only in their seeds."""
    seeds = spec.seed_axis
    return ", ".join(f"{k}={v}" for k, v in p.axes.items() if seeds is None or k != seeds.name)


def seeds_per_point(rows: list[dict]) -> str:
    """``16 grid points x 2 seeds`` (``1-2 seeds`` where the points differ)."""
    per_point = Counter(r["grid_point"] for r in rows).values()
    lo, hi = min(per_point, default=0), max(per_point, default=0)
    return f"{len(per_point)} grid points x {lo if lo == hi else f'{lo}-{hi}'} seed{'s' if hi > 1 else ''}"


def format_plan(spec: SweepSpec, rows: list[dict]) -> str:
    head = (f"{'run_id':<12}  {'point':<36} {'rho':>6} {'experts':>7} {'slots':>10} {'P_tot':>12} {'P_act':>11} "
            f"{'tokens':>12} {'FLOPs':>9} {'GPU-h':>7}")
    lines = [f"sweep {spec.name}: {len(rows)} trials = {seeds_per_point(rows)} ({spec.experiment}); GPU-hours at "
             f"{spec.launch.assumed_mfu * 100:g}% MFU of one {spec.launch.gpu_name}", head]
    for r in rows:
        rho = "-" if r["rho"] is None else f"{r['rho']:.3f}"
        lines.append(f"{r['run_id']:<12}  {r['point'][:36]:<36} {rho:>6} {r['experts']:>7} {r['engram_slots']:>10,} "
                     f"{r['P_tot']:>12,} {r['P_act']:>11,} {r['tokens']:>12,} {r['total_flops']:>9.2e} "
                     f"{r['gpu_hours']:>7.4f}")
    total = sum(r["gpu_hours"] for r in rows)
    lines.append(f"total: {sum(r['tokens'] for r in rows):,} tokens, {sum(r['total_flops'] for r in rows):.3e} FLOPs, "
                 f"{total:.2f} GPU-hours")
    return "\n".join(lines)
