"""Optuna studies, the status table, and the main job's whole path (plan, train, fit, table, figure) in small."""

from pathlib import Path

import yaml

from engram_lab.cli import main
from sweeps.launch import run_sweep
from sweeps.study import load

from ..experiments.tiny import tiny

REPO = Path(__file__).resolve().parents[2]


def test_optuna_study_samples_trains_and_records(tmp_path):
    spec = {"name": "study", "experiment": "search",
            "trial": tiny(train={"tokens": 8 * 64 * 12, "eval_every_tokens": 8 * 64 * 4}),
            "optuna": {"n_trials": 3, "workers": 1, "sampler": {"type": "random", "seed": 1},
                       "pruner": {"type": "median", "n_startup_trials": 1},
                       "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                 "model.engram.layers": {"type": "categorical", "choices": [[0], [1]]}}},
            "launch": {"executor": "debug", "storage": f"sqlite:///{tmp_path / 'study.db'}"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_sweep(path, results=tmp_path / "results", workdir=tmp_path / "runs")
    study = load("study", spec["launch"]["storage"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert complete and all(1e-3 <= t.params["optim.lr"] <= 1e-2 for t in finished)
    records = list((tmp_path / "results" / "study" / "runs").glob("*.json"))
    assert {r.stem for r in records} >= {t.user_attrs["run_id"] for t in complete}
    # the driver restarted on a finished study starts no new trial
    run_sweep(path, results=tmp_path / "results", workdir=tmp_path / "runs")
    assert len(load("study", spec["launch"]["storage"]).trials) == 3
    assert main(["status", "study", "--results", str(tmp_path / "results"), "--workdir", str(tmp_path / "runs")]) == 0


def test_main_job_path_plans_trains_fits_and_draws(tmp_path, capsys):
    spec = yaml.safe_load((REPO / "sweeps" / "specs" / "smoke.yaml").read_text())
    spec["base"] = str(REPO / "experiments" / "configs" / "smoke.yaml")
    spec["set"]["train.tokens"] = 16 * 128 * 8
    spec["grid"]["rho"]["values"] = [0.3, 0.6, 0.9]
    spec["launch"]["executor"] = "debug"
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc = main(["sweep", str(path), "--results", str(tmp_path / "results"), "--workdir", str(tmp_path / "runs")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 completed" in out
    sweep = tmp_path / "results" / "smoke"
    assert (sweep / "fits.json").exists() and (sweep / "table.csv").exists()
    assert (sweep / "figures" / "u_curve.png").stat().st_size > 10_000
    assert main(["status", "smoke", "--results", str(tmp_path / "results"),
                 "--workdir", str(tmp_path / "runs")]) == 0
    status = capsys.readouterr().out
    assert status.count("completed") >= 3 and "optuna: 3 complete" in status
