"""How many seeds per grid point locate rho* to a target, before the sweep runs (``engram-lab plan SPEC --power``).

The planned rho values of each budget are simulated as :mod:`analysis.power` does: the true curve is the law that
AICc chose for a pilot sweep's runs at that budget (or the paper's U where no pilot has one), the noise the pilot's
pooled seed sd (or ``--noise``). Where the planned values do not reach the target, the same simulation runs on the
grid refined around the curve's minimum (:func:`analysis.power.refined_grid`). Where the pilot ran the planned values
with two or more seeds each (a sweep planning more seeds of itself), they are simulated once more with its mean
loss at each rho as the true curve: a second count beside the law's (:mod:`analysis.power` says when they part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.power import (
    DRAWS,
    LEVEL,
    SEED_COUNTS,
    TARGET,
    Curve,
    MeanCurve,
    Power,
    chosen_curve,
    mean_curve,
    seeds_needed,
)
from engram.budget import count
from sweeps.spec import PlannedTrial, SweepSpec

# PAPER.md section 1: 1.7248 at rho = 1 and 1.7109 near the optimum at rho ~ 0.75-0.80 (the 10B budget)
PAPER_RHO_STAR = 0.78
PAPER_DEPTH = 0.0139


def paper_curve() -> Curve:
    c = PAPER_DEPTH / (1 - PAPER_RHO_STAR) ** 2
    return Curve("quadratic", np.array([c * PAPER_RHO_STAR ** 2, -2 * c * PAPER_RHO_STAR, c]),
                 f"the paper's U (rho* {PAPER_RHO_STAR}, L(1) - L(rho*) = {PAPER_DEPTH})")


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
    means: dict[str, MeanCurve]  # by budget, where every rho value ran two or more seeds


def read_pilot(results: str | Path, sweep: str) -> Pilot:
    """A finished sweep's seed noise and, per budget, the law AICc chose for its runs and its mean loss at each rho."""
    import pandas as pd

    from analysis import data, fits, tables

    df = data.load(results, sweep)
    floor = tables.noise_floor(df)
    runs = data.completed_runs(df)
    curves, means = {}, {}
    if "accounting.rho" in runs and len(runs):
        runs = runs[runs["accounting.rho"].notna()]
        budgets = runs["axes.budget"].astype(str) if "axes.budget" in runs else pd.Series("all", index=runs.index)
        for budget in sorted(set(budgets)):
            fit = fits.fit_u_curve_group(runs[budgets == budget], n_boot=100)
            if fit.get("selection"):
                selection = fit["selection"]
                curves[budget] = chosen_curve(selection, f"the {selection['chosen']} law AICc chose for {sweep} "
                                                         f"budget {budget}")
            if fit.get("points") and all(pt["n"] >= 2 for pt in fit["points"]):
                means[budget] = mean_curve(fit["points"], f"the mean loss at each rho of {sweep} budget {budget}")
    return Pilot(sweep, tables.pooled_sd(floor), int((floor["seeds"] - 1).sum()), curves, means)


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
        needed = seeds_needed(grid.rhos, curve, noise, target)
        if needed.rho_star is None:
            lines.append("  the curve has no minimum inside the planned rho values: there is no optimum in them to "
                         "locate, with any number of seeds")
            continue
        true = needed.rho_star
        lines += _power_lines(needed.grid, true, target)
        if needed.refined is not None:
            added = sorted(set(needed.refined_rhos) - set(needed.rhos))
            lines.append(f"  refined around rho* {true:.3f} (adding rho {', '.join(f'{r:.2f}' for r in added)}; "
                         f"{len(needed.refined_rhos)} values):")
            lines += _power_lines(needed.refined, true, target, points=len(needed.refined_rhos))
        pilot_means = found.means if found else {}
        means = pilot_means.get(grid.budget) or next(iter(pilot_means.values()), None)
        if means is not None and means.covers(grid.rhos) and len(means.rhos) == len(grid.rhos):
            by_means = seeds_needed(grid.rhos, means, noise, target)
            lines.append(f"  with {means.source} as the true curve (what a fit's interval resamples around):")
            lines += (["  it has no minimum inside these rho values"] if by_means.grid is None else
                      _power_lines(by_means.grid, by_means.rho_star, target))
    return "\n".join(lines)


def _power_lines(result: Power, true: float, target: float, points: int | None = None) -> list[str]:
    lines = ["  seeds    " + "".join(f"{n:>8}" for n in result.half_widths),
             "  +-rho*   " + "".join(f"{w:>8.3f}" if math.isfinite(w) else f"{'none':>8}"
                                     for w in result.half_widths.values())]
    if result.needed is not None:
        trials = f", {result.needed * points} trials" if points else ""
        lines.append(f"  needed: {result.needed} seed{'s' if result.needed > 1 else ''} per point{trials} "
                     f"(true rho* {true:.3f})")
    elif result.extrapolated is not None:
        lines.append(f"  needed: about {result.extrapolated} seeds per point (extrapolated from "
                     f"{SEED_COUNTS[-1]} as 1/sqrt(seeds); true rho* {true:.3f})")
    elif result.levels_off:
        (a, wa), (b, wb) = list(result.half_widths.items())[-2:]
        lines.append(f"  needed: more than {b} seeds per point, and more seeds on these rho values are no sure way "
                     f"to +-{target}: from {a} to {b} seeds the +- fell from {wa:.3f} to {wb:.3f}, slower than "
                     f"1/sqrt(seeds) (true rho* {true:.3f})")
    else:
        lines.append(f"  needed: more than {SEED_COUNTS[-1]} seeds per point")
    if not all(math.isfinite(w) for w in result.half_widths.values()):
        lines.append(f"  (none: over {1 - LEVEL:.0%} of the simulated fits have no minimum)")
    return lines
