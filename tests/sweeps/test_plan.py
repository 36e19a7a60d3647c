"""The power estimate of ``engram-lab plan --power``: proven on the delta method first, then on a skewed U, then
through the command."""

import numpy as np
import pytest
import yaml

from analysis.power import Curve, MeanCurve, half_width, power, refined_grid, seeds_needed
from analysis.simulate import quadratic_law, simulate_u_curve, write_sweep
from engram_lab.cli import main
from sweeps.power import paper_curve

from ..experiments.tiny import tiny

RHOS = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


def _delta_method_half_width(rhos, curve: Curve, noise: float, seeds: int) -> float:
    """1.96 standard errors of -b/2c from the least-squares covariance: right where the noise is small."""
    X = np.vander(np.repeat(rhos, seeds), 3, increasing=True)
    _, b, c = curve.params
    g = np.array([0.0, -1 / (2 * c), b / (2 * c * c)])
    return 1.96 * noise * float(np.sqrt(g @ np.linalg.inv(X.T @ X) @ g))


@pytest.mark.parametrize("seeds", [2, 4])
def test_where_only_the_quadratic_takes_part_the_half_width_is_the_delta_methods(seeds):
    rhos = [0.4, 0.6, 0.8, 1.0]  # four rho values: the four-parameter laws leave no df of lack of fit
    expected = _delta_method_half_width(rhos, paper_curve(), 0.002, seeds)
    assert half_width(rhos, paper_curve(), 0.002, seeds) == pytest.approx(expected, rel=0.08)


def test_choosing_among_laws_costs_precision_on_a_quadratic_and_removes_the_bias_on_a_skewed_u():
    # on a quadratic, the cubic and the asymmetric law sometimes win AICc and add their own scatter
    assert half_width(RHOS, paper_curve(), 0.002, 4) > _delta_method_half_width(RHOS, paper_curve(), 0.002, 4)
    # the paper's reading: back at the pure-MoE loss near 0.4, minimum at 0.8 (curvatures ~16x apart); a quadratic
    # fitted to it is pulled toward the flat arm, the asymmetric law chosen by AICc is not
    skewed = Curve("asymmetric", np.array([1.70, 0.014 / 0.16 / 16, 0.014 / 0.04, 0.8]), "skewed")
    assert half_width(RHOS, skewed, 0.001, 4) < 0.03
    x = np.repeat(RHOS, 4)
    quadratic_rho_star = -np.polyfit(x, skewed.at(x), 2)[1] / (2 * np.polyfit(x, skewed.at(x), 2)[0])
    assert abs(quadratic_rho_star - 0.8) > 0.05


def test_more_seeds_narrow_rho_star_and_the_fewest_that_reach_the_target_are_found():
    result = power(RHOS, paper_curve(), noise=0.01)
    widths = list(result.half_widths.values())
    # from two seeds on; one seed (8 runs) can be narrower: AICc's small-sample penalty then leaves the
    # four-parameter laws almost no chance, and the quadratic alone scatters less
    assert widths[1:] == sorted(widths[1:], reverse=True) and list(result.half_widths) == [1, 2, 4, 8, 16]
    n = result.needed
    assert half_width(RHOS, paper_curve(), 0.01, n) <= 0.05 < half_width(RHOS, paper_curve(), 0.01, n - 1)
    assert power(RHOS, paper_curve(), noise=0.01) == result  # seeded draws: the same answer every time


def test_past_sixteen_seeds_the_count_is_extrapolated():
    result = power(RHOS, paper_curve(), noise=0.015)
    assert result.needed is None and result.extrapolated > 16
    assert result.extrapolated == pytest.approx(16 * (result.half_widths[16] / 0.05) ** 2, abs=1)


def test_where_more_seeds_stop_helping_a_grid_refined_around_the_minimum_does():
    """The real-text ladder's 2e14 rung: a flat-bottomed asymmetric U (the law AICc chose for it, minimum 0.875) and
    its seed sd. On nine rho values 0.1 apart the +- levels off near 0.10 (no 1/sqrt(seeds) extrapolation is made
    from that); with the three midpoints next to the minimum added, a handful of seeds reach +-0.05."""
    ladder = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    flat = Curve("asymmetric", np.array([4.0217, 0.1111, 7.7352, 0.8755]), "ladder 2e14")
    coarse = power(ladder, flat, noise=0.0286)
    assert coarse.needed is None and coarse.levels_off and coarse.extrapolated is None
    dense = refined_grid(ladder, 0.8755)
    assert dense == pytest.approx(sorted(ladder + [0.75, 0.85, 0.95]))
    assert power(dense, flat, noise=0.0286).needed <= 8


def test_a_curve_without_a_minimum_is_refused():
    with pytest.raises(ValueError, match="no minimum"):
        power(RHOS, Curve("quadratic", np.array([1.0, -0.1, 0.0]), "a line"), noise=0.01)


def test_where_the_law_is_true_its_means_are_the_same_truth():
    skewed = Curve("asymmetric", np.array([1.70, 0.005, 0.35, 0.8]), "skewed")
    means = MeanCurve(np.array(RHOS), skewed.at(RHOS), "its means")
    assert means.minimum(0.2, 1.0) == pytest.approx(skewed.minimum(0.2, 1.0), abs=1e-3)
    assert half_width(RHOS, means, 0.004, 4) == pytest.approx(half_width(RHOS, skewed, 0.004, 4), abs=1e-3)


def test_means_are_known_only_where_they_were_measured():
    ladder = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    flat = Curve("asymmetric", np.array([4.0217, 0.1111, 7.7352, 0.8755]), "ladder 2e14")
    means = MeanCurve(np.array(ladder), flat.at(ladder), "the ladder's means")
    with pytest.raises(ValueError, match="known only at rho"):
        means.at([0.85])
    # more seeds on these values cannot reach +-0.05 (the test above), and the refined grid's midpoints have no means
    needed = seeds_needed(ladder, means, 0.0286)
    assert needed.grid.needed is None and needed.refined is None


def _allocation_spec(tmp_path, name="alloc"):
    spec = {"name": name, "experiment": "allocation", "trial": tiny(budget={"total_params": 400_000, "rho": 0.8}),
            "grid": {"rho": {"path": "budget.rho", "values": [0.2, 0.4, 0.6, 0.8, 1.0]}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_plan_power_with_a_given_noise_uses_the_papers_u(tmp_path, capsys):
    assert main(["plan", _allocation_spec(tmp_path), "--power", "--noise", "0.02",
                 "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "5 trials = 5 grid points x 1 seed" in out
    assert "seed noise sd 0.0200 nats (--noise)" in out and "curve: the paper's U" in out
    assert "+-rho*" in out and "needed:" in out


def test_plan_power_reads_a_pilots_noise_and_curve(tmp_path, capsys):
    results = tmp_path / "results"
    runs = simulate_u_curve(np.random.default_rng(0), {"2e20": quadratic_law(1.8, 0.6, 0.3)}, RHOS, seeds=3,
                            noise=0.004, sweep="pilot")
    write_sweep(results, runs)
    losses = np.array([r["metrics"]["val_loss"] for r in runs]).reshape(len(RHOS), 3)  # rho-major, then seeds
    pooled = float(np.sqrt(losses.var(axis=1, ddof=1).mean()))
    assert main(["plan", _allocation_spec(tmp_path), "--power", "--pilot", "pilot", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"seed noise sd {pooled:.4f} nats (pooled over the repeated grid points of pilot: 16 degrees" in out
    assert "law AICc chose for pilot budget 2e20" in out
    rho_star = float(out.split("true rho* ")[1].split(")")[0])
    assert rho_star == pytest.approx(0.6, abs=0.05)


def test_plan_power_for_more_seeds_of_a_sweep_also_takes_its_means_as_the_truth(tmp_path, capsys):
    """A pilot that ran the planned rho values with repeated seeds: the simulation runs once around the law it chose
    and once around its mean loss at each rho (the fit's interval resamples around those)."""
    from sweeps.power import rho_grids
    from sweeps.spec import expand, load_spec

    spec = _allocation_spec(tmp_path)
    grid = next(iter(rho_grids(load_spec(spec), expand(load_spec(spec))).values()))
    results = tmp_path / "results"
    write_sweep(results, simulate_u_curve(np.random.default_rng(1), {"2e20": quadratic_law(1.8, 0.6, 0.3)},
                                          grid.rhos, seeds=3, noise=0.004, sweep="pilot"))
    assert main(["plan", spec, "--power", "--pilot", "pilot", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "law AICc chose for pilot budget 2e20" in out
    by_means = out.split("with the mean loss at each rho of pilot budget 2e20 as the true curve")[1]
    assert "+-rho*" in by_means and "needed:" in by_means


def test_plan_power_without_noise_or_records_says_what_to_pass(tmp_path, capsys):
    assert main(["plan", _allocation_spec(tmp_path), "--power", "--results", str(tmp_path / "results")]) == 2
    assert "pass --pilot SWEEP" in capsys.readouterr().err
