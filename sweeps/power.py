"""How many seeds per grid point locate rho* to a target, before the sweep runs (``engram-lab plan SPEC --power``).

The planned rho values of each budget are trained again in simulation: a true curve (the law that AICc chose for a
pilot sweep's runs at that budget, or the paper's U where no pilot has one) plus Gaussian seed noise (the pilot's
pooled seed sd, or ``--noise``). Each simulated sweep is analysed as the U-curve fit analyses a real one: the three
laws fitted to its runs, one chosen by AICc, rho* its minimiser on the sampled range
(:func:`analysis.stats.choose_laws`; equal weights, the simulated noise being the same at every rho). The half-width
for n seeds is the 95th percentile of |estimated rho* - true rho*| over the simulated sweeps: the +- that a sweep
with n seeds at each point reaches 95 times in 100. A simulated sweep whose chosen law has its minimum at a range end
(no interior optimum) misses by an infinite amount. The random draws are seeded: the same inputs give the same
answer.

Where the planned values do not reach the target with the simulated seed counts, the count is extrapolated as
1/sqrt(seeds) unless the +- has stopped shrinking that way (a flat bottom or the grid's spacing then sets it, not the
noise), and the same simulation runs on the grid refined around the curve's minimum (:func:`refined_grid`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import stats
from engram.budget import count
from sweeps.spec import PlannedTrial, SweepSpec

SEED_COUNTS = (1, 2, 4, 8, 16)
TARGET = 0.05
LEVEL = 0.95
DRAWS = 2000
# PAPER.md section 1: 1.7248 at rho = 1 and 1.7109 near the optimum at rho ~ 0.75-0.80 (the 10B budget)
PAPER_RHO_STAR = 0.78
PAPER_DEPTH = 0.0139


@dataclass
class Curve:
    """A true mean validation loss L(rho): a law of :data:`analysis.stats.U_MODELS` with its parameters."""

    model: str
    params: np.ndarray
    source: str

    def at(self, rho) -> np.ndarray:
        return stats.u_predict(self.model, self.params, rho)

    def minimum(self, lo: float, hi: float) -> float | None:
        """The curve's minimiser on [lo, hi] when it lies strictly inside, else None (no optimum to locate)."""
        x, interior, _ = stats.argmin_in_range(self.model, np.asarray(self.params, float)[None, :], lo, hi)
        return float(x[0]) if interior[0] else None


def paper_curve() -> Curve:
    c = PAPER_DEPTH / (1 - PAPER_RHO_STAR) ** 2
    return Curve("quadratic", np.array([c * PAPER_RHO_STAR ** 2, -2 * c * PAPER_RHO_STAR, c]),
                 f"the paper's U (rho* {PAPER_RHO_STAR}, L(1) - L(rho*) = {PAPER_DEPTH})")


def half_width(rhos, curve: Curve, noise: float, seeds: int, draws: int = DRAWS, level: float = LEVEL) -> float:
    """The +- on rho* that a sweep of ``seeds`` runs at each of ``rhos`` reaches with probability ``level``."""
    x = np.repeat(np.asarray(rhos, float), seeds)
    lo, hi = float(x.min()), float(x.max())
    names = stats.participating_laws(len(set(rhos)), len(x))
    if not names:
        return math.inf
    rng = np.random.default_rng(seeds)
    Y = curve.at(x)[None, :] + rng.standard_normal((draws, len(x))) * noise
    est = stats.choose_laws(x, Y, np.ones(len(x)), lo, hi, names)
    miss = np.where(est["interior"], np.abs(est["rho_star"] - curve.minimum(lo, hi)), np.inf)
    return float(np.quantile(miss, level, method="inverted_cdf"))


@dataclass
class Power:
    half_widths: dict[int, float]  # seeds per point -> +- on rho*
    needed: int | None  # the fewest seeds per point that reach the target, up to the largest simulated count
    extrapolated: int | None  # past that count: the count that 1/sqrt(seeds) scaling from it gives
    levels_off: bool = False  # the +- fell clearly slower than 1/sqrt(seeds) over the last doubling: no extrapolation


# over the last doubling of seeds a +- that shrinks by less than 1/sqrt(2) times this is levelling off: the grid's
# spacing or the flat bottom of the curve, not the noise, sets it
LEVELLING = 1.15


def power(rhos, curve: Curve, noise: float, target: float = TARGET, seed_counts=SEED_COUNTS) -> Power:
    """Half-widths at ``seed_counts`` and the fewest seeds per point that reach ``target``."""
    if curve.minimum(min(rhos), max(rhos)) is None:
        raise ValueError(f"{curve.source} has no minimum inside the planned rho values: no rho* to locate")
    widths = {n: half_width(rhos, curve, noise, n) for n in seed_counts}
    reached = [n for n in seed_counts if widths[n] <= target]
    if reached:
        below = max([n for n in seed_counts if n < reached[0]], default=0)
        needed = next(n for n in range(below + 1, reached[0] + 1)
                      if n == reached[0] or half_width(rhos, curve, noise, n) <= target)
        return Power(widths, needed, None)
    last, largest = seed_counts[-2], seed_counts[-1]
    if not math.isfinite(widths[largest]):
        return Power(widths, None, None)
    if widths[largest] > LEVELLING * widths[last] * math.sqrt(last / largest):
        return Power(widths, None, None, levels_off=True)
    return Power(widths, None, math.ceil(largest * (widths[largest] / target) ** 2))


def refined_grid(rhos, rho_star: float) -> list[float]:
    """``rhos`` with the midpoints of the neighbouring pairs that lie within two grid steps (the median spacing) of
    ``rho_star``: where the minimum is, points locate it; far from it they mostly fix the arms."""
    rhos = sorted(rhos)
    step = float(np.median(np.diff(rhos)))
    near = [(a + b) / 2 for a, b in itertools.pairwise(rhos) if max(abs(a - rho_star), abs(b - rho_star)) <= 2 * step]
    return sorted(rhos + [round(m, 4) for m in near])


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
    """A finished sweep's seed noise and, per budget, the law AICc chose for its runs."""
    import pandas as pd

    from analysis import data, fits, tables

    df = data.load(results, sweep)
    floor = tables.noise_floor(df)
    runs = data.completed_runs(df)
    curves = {}
    if "accounting.rho" in runs and len(runs):
        runs = runs[runs["accounting.rho"].notna()]
        budgets = runs["axes.budget"].astype(str) if "axes.budget" in runs else pd.Series("all", index=runs.index)
        for budget in sorted(set(budgets)):
            selection = fits.fit_u_curve_group(runs[budgets == budget], n_boot=100).get("selection")
            if selection:
                chosen = selection["chosen"]
                curves[budget] = Curve(chosen, np.asarray(selection["candidates"][chosen]["params"]),
                                       f"the {chosen} law AICc chose for {sweep} budget {budget}")
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
        true = curve.minimum(grid.rhos[0], grid.rhos[-1])
        if true is None:
            lines.append("  the curve has no minimum inside the planned rho values: there is no optimum in them to "
                         "locate, with any number of seeds")
            continue
        result = power(grid.rhos, curve, noise, target)
        lines += _power_lines(result, true, target)
        if result.needed is None and math.isfinite(result.half_widths[SEED_COUNTS[-1]]):
            dense = refined_grid(grid.rhos, true)
            added = sorted(set(dense) - set(grid.rhos))
            if added:
                lines.append(f"  refined around rho* {true:.3f} (adding rho {', '.join(f'{r:.2f}' for r in added)}; "
                             f"{len(dense)} values):")
                lines += _power_lines(power(dense, curve, noise, target), true, target, points=len(dense))
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
