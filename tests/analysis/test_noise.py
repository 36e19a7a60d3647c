"""The noise floor: the seed-to-seed scatter of validation loss at each grid point, in the tables and the report."""

import numpy as np
import pytest

from analysis import claims, report, tables
from analysis.data import frame_from_records
from analysis.fits import fit_all
from analysis.simulate import make_run_record, quadratic_law, simulate_placement, simulate_u_curve

RHOS = (0.2, 0.5, 0.8, 1.0)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    allocation = simulate_u_curve(rng, {"2e20": quadratic_law(1.8, 0.7, 0.3)}, RHOS, seeds=3, noise=0.01, sweep="a")
    placement = simulate_placement(rng, {(1,): 1.9, (2,): 1.91}, seeds=1, sweep="p")
    broken = make_run_record(sweep="a", experiment="allocation", status="failed", axes={"rho": 0.5, "budget": "2e20",
                                                                                        "seed": 9})
    return allocation, placement + [broken]


def test_each_grid_point_gets_its_seed_count_mean_and_sd(runs):
    allocation, others = runs
    floor = tables.noise_floor(frame_from_records(allocation + others))
    points = floor[floor["sweep"] == "a"]
    assert list(points["axes.rho"]) == list(RHOS) and (points["seeds"] == 3).all()  # the failed run is no seed
    losses = np.array([r["metrics"]["val_loss"] for r in allocation]).reshape(len(RHOS), 3)
    assert points["mean val_loss"].to_numpy() == pytest.approx(losses.mean(axis=1))
    assert points["seed sd"].to_numpy() == pytest.approx(losses.std(axis=1, ddof=1))
    single = floor[floor["sweep"] == "p"]
    assert (single["seeds"] == 1).all() and single["seed sd"].isna().all()  # one seed: no sd, not a zero
    summary = tables.noise_summary(floor)
    assert list(summary["sweep"]) == ["a"] and summary["points with 2+ seeds"].item() == len(RHOS)
    assert summary["pooled seed sd"].item() == pytest.approx(np.sqrt(losses.var(axis=1, ddof=1).mean()))
    assert summary["mean seed sd"].item() == pytest.approx(losses.std(axis=1, ddof=1).mean())


def test_the_noise_table_and_the_reports_data_section_show_it(runs, tmp_path):
    allocation, others = runs
    df = frame_from_records(allocation + others)
    fits = fit_all(df, n_boot=50)
    tables.write_tables(df, fits, tmp_path)
    assert "| seeds | mean val_loss | seed sd |" in (tmp_path / "tables" / "noise.md").read_text()
    text = report.build_report(df, fits, {}, claims.evaluate(fits, df), tmp_path / "report.md")
    data = text.split("## Data")[1].split("## Fitted laws")[0]
    pooled = tables.noise_summary(tables.noise_floor(df))["pooled seed sd"].item()
    assert "Noise floor:" in data and format(pooled, ".5g") in data


def test_without_repeated_seeds_the_report_says_the_noise_is_unknown(runs, tmp_path):
    _, others = runs
    df = frame_from_records(others)
    fits = fit_all(df, n_boot=50)
    text = report.build_report(df, fits, {}, claims.evaluate(fits, df), tmp_path / "report.md")
    assert "Noise floor: unknown" in text
