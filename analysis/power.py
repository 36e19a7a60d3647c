"""How many seeds per grid point locate rho* to a target: sweeps of a known curve simulated and fitted.

The rho values of a budget are trained again in simulation: a true curve plus Gaussian seed noise. The true curve
is a law of :data:`analysis.stats.U_MODELS` with its parameters (:class:`Curve`: the paper's U, or the law AICc chose
for a pilot's runs, for planning rho values not yet run) or a sweep's own mean loss at each rho (:class:`MeanCurve`:
after the sweep, on the values it ran). The law smooths the means' bumps away; the means keep them, as the seed
bootstrap of rho*'s interval does. At 2e14 the ladder's law, fitted to five seeds, asked for seven seeds a point;
seven left the interval 0.165 wide, and now the law asks six and the means about 41 (results/README.md, 2026-12-06).
Each simulated sweep is analysed as the U-curve fit analyses a real one: the three laws fitted to its runs, one
chosen by AICc, rho* its minimiser on the sampled range (:func:`analysis.stats.choose_laws`; equal weights, the
simulated noise being the same at every rho). The half-width for n seeds is the 95th percentile of |estimated rho* -
true rho*| over the simulated sweeps: the +- that a sweep with n seeds at each point reaches 95 times in 100. A
simulated sweep whose chosen law has its minimum at a range end (no interior optimum) misses by an infinite amount.
The random draws are seeded: the same inputs give the same answer.

Where the rho values do not reach the target with the simulated seed counts, the count is extrapolated as
1/sqrt(seeds) unless the +- has stopped shrinking that way (a flat bottom or the grid's spacing then sets it, not the
noise); then :func:`seeds_needed` simulates the grid refined around the minimum (:func:`refined_grid`) as well.
``engram-lab plan --power`` runs it before a sweep (sweeps/power.py), the U-curve fit after one, where its rho*
interval is wider than the target (analysis/fits.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from analysis import stats

SEED_COUNTS = (1, 2, 4, 8, 16)
TARGET = 0.05
LEVEL = 0.95
DRAWS = 2000
RHO_MATCH = 1e-3  # achieved rho values of one planned value agree far closer; planned values lie 0.05 or more apart


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

    def covers(self, rhos) -> bool:
        return True


@dataclass
class MeanCurve:
    """A sweep's mean validation loss at each rho it ran, as the true curve: defined at those rho values alone.
    Its rho* is what the analysis finds in a sweep that measured these means exactly, with the most seeds simulated
    (the laws fitted, one chosen by AICc): the value that more seeds converge to."""

    rhos: np.ndarray
    means: np.ndarray
    source: str

    def at(self, rho) -> np.ndarray:
        rho = np.asarray(rho, float)
        i = np.abs(rho[..., None] - self.rhos).argmin(-1)
        if not np.allclose(self.rhos[i], rho, rtol=0, atol=RHO_MATCH):
            raise ValueError(f"{self.source} is known only at rho {self.rhos.round(4).tolist()}")
        return self.means[i]

    def minimum(self, lo: float, hi: float) -> float | None:
        inside = (self.rhos >= lo - 1e-9) & (self.rhos <= hi + 1e-9)
        x, y = np.tile(self.rhos[inside], SEED_COUNTS[-1]), np.tile(self.means[inside], SEED_COUNTS[-1])
        names = stats.participating_laws(int(inside.sum()), len(x))
        if not names:
            return None
        est = stats.choose_laws(x, y[None, :], np.ones(len(x)), lo, hi, names)
        return float(est["rho_star"][0]) if est["interior"][0] else None

    def covers(self, rhos) -> bool:
        return all(np.abs(self.rhos - r).min() <= RHO_MATCH for r in rhos)


def half_width(rhos, curve: Curve | MeanCurve, noise: float, seeds: int, draws: int = DRAWS,
               level: float = LEVEL) -> float:
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


def power(rhos, curve: Curve | MeanCurve, noise: float, target: float = TARGET, seed_counts=SEED_COUNTS,
          draws: int = DRAWS) -> Power:
    """Half-widths at ``seed_counts`` and the fewest seeds per point that reach ``target``."""
    if curve.minimum(min(rhos), max(rhos)) is None:
        raise ValueError(f"{curve.source} has no minimum inside the planned rho values: no rho* to locate")
    widths = {n: half_width(rhos, curve, noise, n, draws) for n in seed_counts}
    # the counts from which on every larger one reaches it too: with one seed AICc's small-sample penalty can leave
    # the quadratic alone, narrower by chance than two seeds' choice among the laws
    reached = [n for n in seed_counts if all(widths[m] <= target for m in seed_counts if m >= n)]
    if reached:
        below = max([n for n in seed_counts if n < reached[0]], default=0)
        needed = next(n for n in range(below + 1, reached[0] + 1)
                      if n == reached[0] or half_width(rhos, curve, noise, n, draws) <= target)
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


@dataclass
class SeedsNeeded:
    """:func:`power` on some rho values and, where more seeds on them cannot reach the target, on the grid refined
    around the curve's minimum."""

    rhos: list[float]
    rho_star: float | None  # the true curve's minimum inside the rho values; None: there is no optimum to locate
    grid: Power | None = None
    refined_rhos: list[float] | None = None
    refined: Power | None = None


def seeds_needed(rhos, curve: Curve | MeanCurve, noise: float, target: float = TARGET,
                 draws: int = DRAWS) -> SeedsNeeded:
    rhos = sorted(float(r) for r in rhos)
    true = curve.minimum(rhos[0], rhos[-1])
    if true is None:
        return SeedsNeeded(rhos, None)
    out = SeedsNeeded(rhos, true, power(rhos, curve, noise, target, draws=draws))
    if out.grid.needed is None and math.isfinite(out.grid.half_widths[SEED_COUNTS[-1]]):
        dense = refined_grid(rhos, true)
        if not curve.covers(dense):  # measured means say nothing between the rho values run
            return out
        if len(dense) > len(rhos):
            out.refined_rhos, out.refined = dense, power(dense, curve, noise, target, draws=draws)
    return out


def mean_curve(points, source: str) -> MeanCurve:
    """The mean loss at each rho of a U-curve fit's ``points`` (records with ``rho`` and ``mean``)."""
    return MeanCurve(np.array([pt["rho"] for pt in points], float), np.array([pt["mean"] for pt in points], float),
                     source)


def chosen_curve(selection: dict, source: str) -> Curve:
    """The law a U-curve fit's AICc selection chose (``analysis.stats.u_model_choice``), as a true curve."""
    chosen = selection["chosen"]
    return Curve(chosen, np.asarray(selection["candidates"][chosen]["params"], float), source)
