"""The fitters proven on records drawn from known laws (DESIGN.md, style habit 11)."""

import json
import math

import numpy as np
import pytest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from analysis import claims, fits, stats
from analysis.data import frame_from_records
from analysis.simulate import (quadratic_law, simulate_ablation, simulate_placement, simulate_power_law,
                               simulate_u_curve)

RHOS = tuple(np.round(np.linspace(0.3, 1.0, 10), 3))


def _inside(value, ci):
    return (ci[0] is None or ci[0] <= value) and (ci[1] is None or value <= ci[1])


def test_u_curve_recovers_the_optimum_inside_both_intervals():
    rng = np.random.default_rng(1)
    laws = {"2e20": quadratic_law(1.8155, 0.78, 0.28), "6e20": quadratic_law(1.7105, 0.72, 0.30)}
    f = fits.fit_u_curve(frame_from_records(simulate_u_curve(rng, laws, RHOS)))
    for budget, true in (("2e20", 0.78), ("6e20", 0.72)):
        b = f["budgets"][budget]
        assert b["status"] == "ok" and b["interior"] and b["method"] == "OLS on runs"
        assert _inside(true, b["rho_star"]["ci_delta"]) and _inside(true, b["rho_star"]["ci_bootstrap"])
        gap = 0.28 * 0.22 ** 2 if budget == "2e20" else 0.30 * 0.28 ** 2
        assert _inside(gap, b["loss_gap_rho1"]["ci_bootstrap"])
        assert "U-shaped" in b["verdict"] and "alternative" in b and b["preferred_by_aic"] in ("quadratic", "cubic")
    assert _inside(0.72 - 0.78, f["stability"]["ci"])


def test_u_curve_with_seeds_uses_wls_on_point_means():
    rng = np.random.default_rng(2)
    f = fits.fit_u_curve(frame_from_records(simulate_u_curve(rng, {"b": quadratic_law(2.0, 0.75, 0.3)}, RHOS,
                                                             seeds=3, noise=0.002)))
    b = f["budgets"]["b"]
    assert b["method"].startswith("WLS") and b["n"] == 30 and b["n_points"] == 10
    assert b["interior"] and _inside(0.75, b["rho_star"]["ci_delta"])


@pytest.mark.parametrize("seeds, method", [(1, "OLS"), (3, "WLS")])
def test_u_curve_intervals_cover_the_true_optimum_at_nominal_rate(seeds, method):
    # 200 independent draws of the same law: a 95% interval should contain rho* about 190 times. The records are
    # built once without noise; each draw adds fresh noise to their losses (building 200 tables would be slow)
    rng = np.random.default_rng(2026)
    clean = frame_from_records(simulate_u_curve(rng, {"b": quadratic_law(1.8155, 0.78, 0.28)}, RHOS, seeds=seeds,
                                                noise=0.0))
    hits_delta = hits_boot = 0
    for i in range(200):
        df = clean.assign(**{"metrics.val_loss": clean["metrics.val_loss"] + rng.normal(0, 0.003, len(clean))})
        b = fits.fit_u_curve_group(df, n_boot=500, seed=i)
        assert b["method"].startswith(method)
        hits_delta += _inside(0.78, b["rho_star"]["ci_delta"])
        hits_boot += _inside(0.78, b["rho_star"]["ci_bootstrap"])
    assert 0.88 <= hits_delta / 200 <= 0.99
    assert 0.88 <= hits_boot / 200 <= 0.99


@pytest.mark.parametrize("law", [lambda r: 1.9 - 0.1 * np.asarray(r),   # falls all the way to pure MoE
                                 quadratic_law(1.70, 1.4, 0.3)])          # convex, but its minimum lies past rho = 1
def test_a_monotone_law_has_no_interior_optimum(law):
    rng = np.random.default_rng(3)
    df = frame_from_records(simulate_u_curve(rng, {"b": law}, RHOS, noise=0.0015))
    f = fits.fit_all(df, n_boot=500)
    b = f["u_curve"]["budgets"]["b"]
    assert not b["interior"] and "no interior optimum" in b["verdict"]
    results = {r["id"]: r for r in claims.evaluate(f, df)}
    assert results["allocation.u_shape"]["verdict"] == claims.CONTRADICTS  # loss still falling at rho = 1
    assert results["allocation.optimum"]["verdict"] != claims.SUPPORTS


def test_too_few_rho_values_cannot_tell():
    df = frame_from_records(simulate_u_curve(np.random.default_rng(4), {"b": quadratic_law(2, 0.8, 0.3)},
                                             (0.5, 0.8, 1.0)))
    b = fits.fit_u_curve(df)["budgets"]["b"]
    assert b["status"] == "insufficient data" and b["verdict"].startswith("cannot tell")


def test_power_law_exponent_and_method_difference_recovered():
    rng = np.random.default_rng(5)
    methods = {"engram": (2.0, 0.010), "overencoding": (2.0, 0.006)}
    df = frame_from_records(simulate_power_law(rng, methods, seeds=2, noise=0.001, baseline=1.9))
    f = fits.fit_memory_scaling(df)
    for name, (_, alpha) in methods.items():
        m = f["methods"][name]
        assert m["status"] == "ok" and _inside(alpha, m["power_law"]["coefficients"]["alpha"]["ci"])
        assert m["log_linear"]["coefficients"]["b"]["ci"][1] < 0
    diff = f["comparisons"]["overencoding - engram"]["alpha_difference"]
    assert _inside(0.006 - 0.010, diff["ci"])
    assert f["baseline"]["n"] == 2


def test_log_linear_slope_recovered():
    rng = np.random.default_rng(6)
    df = frame_from_records(simulate_power_law(rng, {"engram": (1.95, -0.028)}, form="log_linear", noise=0.001,
                                               seeds=2))
    m = fits.fit_memory_scaling(df)["methods"]["engram"]
    assert _inside(-0.028, m["log_linear"]["coefficients"]["b"]["ci"])
    assert _inside(0.0, m["log_linear"]["curvature"]["ci"])


def test_placement_finds_the_best_layer_and_compares_it_with_the_rest():
    rng = np.random.default_rng(7)
    losses = {(0,): 1.775, (1,): 1.765, (2,): 1.776, (3,): 1.780, (1, 3): 1.760}
    f = fits.fit_placement(frame_from_records(simulate_placement(rng, losses, seeds=4, noise=0.001)))
    assert f["best_layer"] == 1 and set(f["layers"]) == {"0", "1", "2", "3"} and set(f["splits"]) == {"1+3"}
    assert all(v["difference"] > 0 and v["p_holm"] < 0.05 for v in f["versus_best"].values())
    assert f["anova"]["p"] < 0.05
    assert _inside(-0.005, f["splits_versus_best"]["1+3"]["ci"])
    assert all(_inside(losses[(int(k),)], v["ci"]) for k, v in f["layers"].items())


def test_ablation_deltas_against_the_reference():
    rng = np.random.default_rng(11)  # one seeded draw; a 95% interval misses 1 draw in 20 (Welch coverage: below)
    losses = {"reference": 1.768, "no_gate": 1.778, "no_conv": 1.768}
    f = fits.fit_ablation(frame_from_records(simulate_ablation(rng, losses, seeds=4, noise=0.001)))
    assert _inside(0.010, f["deltas"]["no_gate"]["ci"]) and f["deltas"]["no_gate"]["verdict"].startswith("hurts")
    assert _inside(0.0, f["deltas"]["no_conv"]["ci"])
    no_ref = fits.fit_ablation(frame_from_records(simulate_ablation(rng, {"no_gate": 1.77}, seeds=2)))
    assert no_ref["status"] == "no reference" and no_ref["verdict"].startswith("cannot tell")


def test_welch_interval_covers_a_null_difference_at_nominal_rate():
    rng = np.random.default_rng(12)
    hits = 0
    for _ in range(200):
        a, b = rng.normal(1.0, 0.01, 4), rng.normal(1.0, 0.02, 3)
        ci = stats.welch(a.mean(), a.std(ddof=1), 4, b.mean(), b.std(ddof=1), 3)["ci"]
        hits += ci[0] <= 0 <= ci[1]
    assert 0.88 <= hits / 200 <= 0.99


def test_welch_matches_statsmodels():
    rng = np.random.default_rng(9)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.1, 0.3, 7)
    ours = stats.welch(a.mean(), a.std(ddof=1), 5, b.mean(), b.std(ddof=1), 7)
    cm = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    assert np.allclose(ours["ci"], cm.tconfint_diff(usevar="unequal"))
    assert math.isclose(ours["p"], cm.ttest_ind(usevar="unequal")[1])
    assert stats.welch(1.0, None, 1, 1.1, 0.1, 3)["ci"] is None  # one seed: no interval is invented


def test_fits_json_is_strict_json(tmp_path):
    rng = np.random.default_rng(10)
    df = frame_from_records(simulate_u_curve(rng, {"b": lambda r: 1.9 - 0.0 * np.asarray(r)}, RHOS, noise=0.001))
    path = fits.save_fits(fits.fit_all(df, n_boot=300), tmp_path / "fits.json")
    loaded = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded["schema"] == fits.SCHEMA and loaded["memory_scaling"]["status"] == "no runs"
