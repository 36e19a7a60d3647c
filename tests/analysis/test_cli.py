"""The analysis subcommands through ``engram-lab``'s own entry point."""

import json

import numpy as np
import pytest

from analysis.simulate import make_run_record, quadratic_law, simulate_u_curve, write_sweep
from engram_lab.cli import main
from engram_lab.records import run_path

LAW = {"2e20": quadratic_law(1.8, 0.78, 0.3)}


@pytest.fixture()
def results(tmp_path):
    rng = np.random.default_rng(0)
    for sweep in ("a", "b"):
        runs = simulate_u_curve(rng, LAW, sweep=sweep)
        runs.append(make_run_record(sweep=sweep, experiment="allocation", status="failed",
                                    axes={"rho": 0.5, "budget": "2e20"}))
        write_sweep(tmp_path / "results", runs)
    return tmp_path / "results"


def test_fit_writes_fits_and_prints_verdicts(results, capsys):
    assert main(["fit", "a", "--results", str(results), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "u_curve: 2e20: U-shaped" in out and "1 excluded" in out
    f = json.loads((results / "a" / "fits.json").read_text())
    assert f["sweeps"] == ["a"] and f["runs"]["excluded"] == 1


def test_fit_pools_several_sweeps(results):
    assert main(["fit", "a", "b", "--results", str(results), "--n-boot", "200"]) == 0
    f = json.loads((results / "_combined" / "a+b" / "fits.json").read_text())
    assert f["runs"]["total"] == 22 and f["u_curve"]["budgets"]["2e20"]["n"] == 20


def test_tables(results):
    assert main(["tables", "a", "--results", str(results), "--n-boot", "200"]) == 0
    assert (results / "a" / "table.csv").is_file() and (results / "a" / "tables" / "fits.tex").is_file()


def test_figures_without_sweeps_draws_every_sweep(results):
    assert main(["figures", "--results", str(results), "--n-boot", "200"]) == 0
    for sweep in ("a", "b"):
        assert (results / sweep / "figures" / "u_curve.png").is_file()
        assert (results / sweep / "figures" / "u_curve.pdf").is_file()


def test_report_to_a_chosen_file_links_its_figures(results, tmp_path):
    out = tmp_path / "elsewhere" / "report.md"
    assert main(["report", "a", "--results", str(results), "--out", str(out), "--n-boot", "200"]) == 0
    text = out.read_text()
    assert "## Comparison with the paper" in text
    assert "](../results/a/figures/u_curve.png)" in text and (out.parent / "../results/a/figures/u_curve.png").is_file()


def test_bad_input_exits_2_naming_the_problem(results, capsys):
    assert main(["fit", "nope", "--results", str(results)]) == 2
    assert "nope" in capsys.readouterr().err
    rec = make_run_record(sweep="a", seed=99)
    path = run_path(results, "a", rec["run_id"])
    path.write_text("{ truncated")
    assert main(["tables", "a", "--results", str(results)]) == 2
    assert str(path) in capsys.readouterr().err


def test_figures_with_no_sweeps_at_all_fails_clearly(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path)]) == 1
    assert "no sweep folders" in capsys.readouterr().err


def test_a_diverged_loss_recorded_as_completed_is_refused_not_fitted(results, capsys):
    """A record written before NaN became null holds a bare NaN, which json reads back as a float."""
    rec = make_run_record(sweep="a", experiment="allocation", seed=99, axes={"rho": 0.6, "budget": "2e20"})
    rec["metrics"]["val_loss"] = float("nan")
    path = run_path(results, "a", rec["run_id"])
    path.write_text(json.dumps(rec))
    assert main(["fit", "a", "--results", str(results), "--n-boot", "200"]) == 2
    assert str(path) in capsys.readouterr().err and not (results / "a" / "fits.json").exists()
