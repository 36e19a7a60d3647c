from pathlib import Path

import pytest
import yaml

from engram.config import ConfigError
from sweeps.launch import run_sweep
from sweeps.spec import expand, grid_points, load_spec

from ..experiments.tiny import tiny

SPECS = sorted((Path(__file__).resolve().parents[2] / "sweeps" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_dry_run_of_every_shipped_spec_prints_its_table(path, capsys):
    outcome = run_sweep(path, dry_run=True)
    out = capsys.readouterr().out
    assert "run_id" in out and "GPU-h" in out
    assert len(outcome.planned) >= 1


def _spec(tmp_path, **extra):
    spec = {"name": "t", "trial": tiny(budget={"total_params": 400_000, "rho": 0.8})}
    spec.update(extra)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_levels_and_extra_points(tmp_path):
    path = _spec(tmp_path, grid={"rho": {"path": "budget.rho", "values": [0.5, 0.8]},
                                 "width": {"levels": {"narrow": {}, "wide": {"model.d_model": 128,
                                                                             "model.n_heads": 4}}},
                                 "seed": {"path": "seed", "values": [0]}},
                 points=[{"rho": 0.5, "width": "narrow", "seed": 1}])
    spec = load_spec(path)
    assert len(grid_points(spec)) == 5
    planned = expand(spec)
    assert len({p.run_id for p in planned}) == 5
    wide = [p for p in planned if p.axes["width"] == "wide"]
    assert all(p.trial.model.d_model == 128 for p in wide)
    assert planned[-1].axes == {"rho": 0.5, "width": "narrow", "seed": 1} and planned[-1].trial.seed == 1
    assert all(p.trial.sweep == "t" and p.trial.axes == p.axes for p in planned)


def test_an_infeasible_point_refuses_the_whole_spec(tmp_path, capsys):
    path = _spec(tmp_path, grid={"total": {"path": "budget.total_params", "values": [400_000, 1000]}})
    with pytest.raises(ConfigError) as err:
        run_sweep(path, results=tmp_path / "results", workdir=tmp_path / "runs")
    assert "point total=1000" in str(err.value) and "budget.total_params" in str(err.value)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()  # nothing submitted


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, grid={"rho": {"path": "budget.rho"}}))
    assert err.value.field == "grid.rho.values"
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, launch={"executor": "kubernetes"}))
    assert err.value.field == "launch.executor"
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, launch={"slurm": {"time_min": 5}}))
    assert err.value.field == "launch.slurm.time_min"
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, grd={}))
    assert err.value.field == "grd"
