"""How many seeds per grid point locate rho* to a target, before the sweep runs (``engram-lab plan SPEC --power``).

The planned rho values of each budget are trained again in simulation: a mean curve (the quadratic through a pilot
sweep's per-rho mean losses, or the paper's U where no pilot has one) plus Gaussian seed noise (the pilot's pooled
seed sd, or ``--noise``). Each simulated sweep is fitted as the U-curve fit does it, a quadratic by least squares
(with equal seeds at every rho, WLS on the per-rho means gives the same estimate), and rho* = -b / 2c. The half-width
for n seeds is the 95th percentile of |fitted rho* - true rho*| over the simulated sweeps: the +- that a sweep with n
seeds at each point reaches 95 times in 100. A simulated fit with no minimum (c <= 0) misses by an infinite amount.
The random draws are seeded: the same inputs give the same answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engram.budget import count
from sweeps.spec import PlannedTrial, SweepSpec

SEED_COUNTS = (1, 2, 4, 8, 16)
TARGET = 0.05
LEVEL = 0.95
DRAWS = 4000
# PAPER.md section 1: 1.7248 at rho = 1 and 1.7109 near the optimum at rho ~ 0.75-0.80 (the 10B budget)
PAPER_RHO_STAR = 0.78
PAPER_DEPTH = 0.0139


@dataclass
class Curve:
    """Mean validation loss L(rho) = a + b rho + c rho^2, and where it came from."""

    params: np.ndarray
    source: str

    @property
    def rho_star(self) -> float | None:
        _, b, c = self.params
        return float(-b / (2 * c)) if c > 0 else None


def paper_curve() -> Curve:
    c = PAPER_DEPTH / (1 - PAPER_RHO_STAR) ** 2
    return Curve(np.array([c * PAPER_RHO_STAR ** 2, -2 * c * PAPER_RHO_STAR, c]),
                 f"the paper's U (rho* {PAPER_RHO_STAR}, L(1) - L(rho*) = {PAPER_DEPTH})")


def half_width(rhos, curve: Curve, noise: float, seeds: int, draws: int = DRAWS, level: float = LEVEL) -> float:
    """The +- on rho* that a sweep of ``seeds`` runs at each of ``rhos`` reaches with probability ``level``."""
    x = np.repeat(np.asarray(rhos, float), seeds)
    fit = np.linalg.pinv(np.vander(x, 3, increasing=True))  # least squares is linear in y: beta = fit @ y
    rng = np.random.default_rng(seeds)
    beta = curve.params + (rng.standard_normal((draws, len(x))) * noise) @ fit.T
    b, c = beta[:, 1], beta[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        miss = np.where(c > 0, np.abs(-b / (2 * c) - curve.rho_star), np.inf)
    return float(np.quantile(miss, level, method="inverted_cdf"))


@dataclass
class Power:
    half_widths: dict[int, float]  # seeds per point -> +- on rho*
    needed: int | None  # the fewest seeds per point that reach the target, up to the largest simulated count
    extrapolated: int | None  # past that count: the count that 1/sqrt(seeds) scaling from it gives


def power(rhos, curve: Curve, noise: float, target: float = TARGET, seed_counts=SEED_COUNTS) -> Power:
    """Half-widths at ``seed_counts`` and the fewest seeds per point that reach ``target``."""
    if curve.rho_star is None:
        raise ValueError(f"{curve.source} has no minimum (its curvature is not positive): no rho* to locate")
    widths = {n: half_width(rhos, curve, noise, n) for n in seed_counts}
    reached = [n for n in seed_counts if widths[n] <= target]
    if reached:
        below = max([n for n in seed_counts if n < reached[0]], default=0)
        needed = next(n for n in range(below + 1, reached[0] + 1)
                      if n == reached[0] or half_width(rhos, curve, noise, n) <= target)
        return Power(widths, needed, None)
    largest = seed_counts[-1]
    if math.isfinite(widths[largest]):
        return Power(widths, None, math.ceil(largest * (widths[largest] / target) ** 2))
    return Power(widths, None, None)


# -- inputs: the plan and a pilot ---------------------------------------------------------------------------------


@dataclass
class RhoGrid:
    budget: str | None  # the point's budget axis value, where the spec has one
    rhos: list[float]


def rho_grids(spec: SweepSpec, planned: list[PlannedTrial]) -> dict[str, RhoGrid]:
    """The achieved rho values of each planned budget: trials grouped by their axes other than the seed and the
    rho axis (``path: budget.rho``), keyed by that group's label."""
    moot = {a.name for a in spec.axes if a.path in ("seed", "budget.rho")}
    grids: dict[str, RhoGrid] = {}
    for p in planned:
        rho = count(p.trial.model, seq_len=p.trial.data.seq_len).rho
        if rho is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in p.axes.items() if k not in moot) or "all trials"
        budget = str(p.axes["budget"]) if "budget" in p.axes else None
        grid = grids.setdefault(label, RhoGrid(budget, []))
        if round(rho, 4) not in grid.rhos:
            grid.rhos.append(round(rho, 4))
    for grid in grids.values():
        grid.rhos.sort()
    return grids


@dataclass
class Pilot:
    sweep: str
    noise: float | None  # seed sd pooled over its grid points with two or more seeds
    dof: int  # the degrees of freedom behind it: a few leave the noise itself uncertain
    curves: dict[str, Curve]  # by budget (axes.budget; "all" for a sweep without one)


def read_pilot(results: str | Path, sweep: str) -> Pilot:
    """A finished sweep's seed noise and its allocation curves (quadratics through the per-rho mean losses)."""
    import pandas as pd

    from analysis import data, tables

    df = data.load(results, sweep)
    floor = tables.noise_floor(df)
    runs = data.completed_runs(df)
    curves = {}
    if "accounting.rho" in runs and len(runs):
        runs = runs[runs["accounting.rho"].notna()]
        budgets = runs["axes.budget"].astype(str) if "axes.budget" in runs else pd.Series("all", index=runs.index)
        for budget in sorted(set(budgets)):
            group = runs[budgets == budget]
            means = group.groupby(group["accounting.rho"].round(4))["metrics.val_loss"].mean()
            if len(means) >= 3:
                params = np.polynomial.polynomial.polyfit(means.index.to_numpy(float), means.to_numpy(float), 2)
                curves[budget] = Curve(params, f"{sweep} budget {budget}: quadratic through its per-rho mean losses")
    return Pilot(sweep, tables.pooled_sd(floor), int((floor["seeds"] - 1).sum()), curves)


def power_report(spec: SweepSpec, planned: list[PlannedTrial], results: str | Path = "results",
                 pilot: str | None = None, noise: float | None = None, target: float = TARGET) -> str:
    """The power section of ``engram-lab plan --power``. The pilot is ``pilot``, else the spec's own sweep where it
    has records; the noise is ``noise``, else the pilot's; the curve is the pilot's for the same budget (else its
    first), else the paper's. Raises ValueError when there is no noise to plan with."""
    if noise is not None and not noise > 0:
        raise ValueError(f"--noise must be > 0 nats, got {noise}")
    own = any((Path(results) / spec.name / "runs").glob("*.json"))
    pilot = pilot or (spec.name if own else None)
    found = read_pilot(results, pilot) if pilot else None
    if noise is not None:
        source = "--noise"
    elif found is None:
        raise ValueError(f"no noise to plan with: {Path(results) / spec.name} holds no run records; pass "
                         "--pilot SWEEP (a sweep with two or more seeds at some grid point) or --noise NATS")
    elif found.noise is None:
        raise ValueError(f"pilot {pilot} has no grid point with two or more completed seeds, so its seed noise is "
                         "unknown: pass --noise NATS")
    else:
        noise = found.noise
        source = f"pooled over the repeated grid points of {pilot}: {found.dof} degrees of freedom"
    grids = {label: g for label, g in rho_grids(spec, planned).items() if len(g.rhos) >= 4}
    if not grids:
        return "power: no budget of the plan has 4 or more rho values, so no quadratic locates rho*"
    curves = found.curves if found else {}
    lines = [f"power: seeds per grid point that locate rho* within +-{target} in {LEVEL:.0%} of {DRAWS} simulated "
             f"sweeps; seed noise sd {noise:.4f} nats ({source})"]
    for label, grid in grids.items():
        curve = curves.get(grid.budget) or next(iter(curves.values()), None) or paper_curve()
        lines.append(f"{label}: {len(grid.rhos)} rho values {grid.rhos[0]:.2f}-{grid.rhos[-1]:.2f}; "
                     f"curve: {curve.source}")
        if curve.rho_star is None or not grid.rhos[0] <= curve.rho_star <= grid.rhos[-1]:
            where = "has no minimum" if curve.rho_star is None else f"has its minimum at rho {curve.rho_star:.3f}"
            lines.append(f"  the curve {where}, outside the planned rho values: there is no optimum in them to "
                         "locate, with any number of seeds")
            continue
        result = power(grid.rhos, curve, noise, target)
        lines.append("  seeds    " + "".join(f"{n:>8}" for n in result.half_widths))
        lines.append("  +-rho*   " + "".join(f"{w:>8.3f}" if math.isfinite(w) else f"{'none':>8}"
                                             for w in result.half_widths.values()))
        if result.needed is not None:
            lines.append(f"  needed: {result.needed} seed{'s' if result.needed > 1 else ''} per point "
                         f"(true rho* {curve.rho_star:.3f})")
        elif result.extrapolated is not None:
            lines.append(f"  needed: about {result.extrapolated} seeds per point (extrapolated from "
                         f"{SEED_COUNTS[-1]} as 1/sqrt(seeds); true rho* {curve.rho_star:.3f})")
        else:
            lines.append(f"  needed: more than {SEED_COUNTS[-1]} seeds per point")
        if not all(math.isfinite(w) for w in result.half_widths.values()):
            lines.append(f"  (none: over {1 - LEVEL:.0%} of the simulated fits have no minimum)")
    return "\n".join(lines)
