import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from engram.config import ConfigError
from engram_lab.cli import main
from sweeps.launch import SweepPaths, check_same_text, prepare, run_sweep, trial_states
from sweeps.status import sweep_status
from experiments.config import trial_from_dict, trial_id
from sweeps.spec import SlurmSpec, expand, grid_points, load_spec, on_slurm
from sweeps.study import grid_choices, grid_distributions, mirror_record, open_study

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
    # the Optuna study's search space holds the extra points' values too: their trials mirror into it
    assert grid_choices(spec) == {"rho": [0.5, 0.8], "width": ["narrow", "wide"], "seed": [0, 1]}
    study = open_study(spec, f"sqlite:///{tmp_path / 'optuna.db'}")
    record = {"run_id": planned[-1].run_id, "status": "failed", "reason": "test", "metrics": {}, "created": "now"}
    mirror_record(study, record, planned[-1].axes, grid_distributions(spec))
    assert [t.params for t in study.get_trials()] == [planned[-1].axes]


def test_an_extra_point_at_a_list_of_seeds(tmp_path):
    grid = {"rho": {"path": "budget.rho", "values": [0.5, 0.8]}}
    spec = load_spec(_spec(tmp_path, grid=grid, seeds=2, points=[{"rho": 0.8, "seed": [2, 3]}, {"rho": 0.5}]))
    assert grid_points(spec)[4:] == [{"rho": 0.8, "seed": 2}, {"rho": 0.8, "seed": 3}]  # rho 0.5 at 0, 1: in the grid
    assert [p.trial.seed for p in expand(spec)] == [0, 1, 0, 1, 2, 3]
    with pytest.raises(ConfigError) as err:
        grid_points(load_spec(_spec(tmp_path, grid=grid, seeds=2, points=[{"rho": 0.8, "seed": [2, -1]}])))
    assert err.value.field == "points[0].seed" and "integers >= 0" in err.value.reason


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


def test_a_slurm_layout_is_the_trials_and_keeps_its_run_id(tmp_path):
    spec = load_spec(_spec(tmp_path, launch={"slurm": {"nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4}}))
    (planned,) = expand(spec)
    on = on_slurm(planned, spec.launch.slurm)
    assert (on.trial.train.num_nodes, on.trial.train.devices) == (2, 4)
    assert trial_id(on.trial) == on.run_id == planned.run_id
    compiled = dataclasses.replace(on.trial, train=dataclasses.replace(on.trial.train, compile="cudagraphs"))
    assert trial_id(compiled) == planned.run_id  # compiled or eager: one trial, resumed and found done either way
    with pytest.raises(ConfigError) as err:  # 8 sequences a step cannot split over 16 GPUs
        on_slurm(planned, SlurmSpec(nodes=2, gpus_per_node=8, tasks_per_node=8))
    assert "train.batch_size" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, launch={"slurm": {"gpus_per_node": 4}}))  # one task per GPU
    assert err.value.field == "launch.slurm.tasks_per_node"


def test_status_of_a_prepared_sweep_lists_every_trial_before_any_record(tmp_path):
    path = _spec(tmp_path, grid={"rho": {"path": "budget.rho", "values": [0.5, 0.8]}})
    spec = load_spec(path)
    paths = SweepPaths(tmp_path / "results", tmp_path / "runs", spec.name)
    prepare(spec, paths, expand(spec))
    out = sweep_status(spec.name, tmp_path / "results", tmp_path / "runs")
    assert out.count(" missing ") == 2 and "trials: 2 missing" in out  # no val_loss yet: shown as '-'


def _nondeterministic_base():
    base = tiny(budget={"total_params": 400_000, "rho": 0.8})
    del base["train"]["deterministic"]
    return base


def test_sweeps_train_deterministically_unless_the_spec_says_otherwise(tmp_path):
    (default,) = expand(load_spec(_spec(tmp_path, trial=_nondeterministic_base())))
    assert default.trial.train.deterministic
    (off,) = expand(load_spec(_spec(tmp_path, trial=_nondeterministic_base(), set={"train.deterministic": False})))
    assert not off.trial.train.deterministic
    kernels = {"levels": {"exact": {}, "fast": {"train.deterministic": False}}}
    by_axis = expand(load_spec(_spec(tmp_path, trial=_nondeterministic_base(), grid={"kernels": kernels})))
    assert [p.trial.train.deterministic for p in by_axis] == [True, False]
    assert by_axis[0].run_id != by_axis[1].run_id  # what a trial trains with is part of its id


def test_seeds_run_every_grid_point_at_each_seed_and_the_plan_counts_them(tmp_path, capsys):
    path = _spec(tmp_path, grid={"rho": {"path": "budget.rho", "values": [0.5, 0.8]}}, seeds=3,
                 points=[{"rho": 0.65}, {"rho": 0.9, "seed": 7}])
    planned = expand(load_spec(path))
    assert [(p.axes["rho"], p.axes["seed"]) for p in planned] == [
        (0.5, 0), (0.5, 1), (0.5, 2), (0.8, 0), (0.8, 1), (0.8, 2), (0.65, 0), (0.65, 1), (0.65, 2), (0.9, 7)]
    assert all(p.trial.seed == p.axes["seed"] and list(p.axes)[-1] == "seed" for p in planned)
    run_sweep(path, dry_run=True)
    assert "10 trials = 4 grid points x 1-3 seeds" in capsys.readouterr().out
    listed = expand(load_spec(_spec(tmp_path, seeds=[0, 4])))
    assert [p.trial.seed for p in listed] == [0, 4]


@pytest.mark.parametrize("extra,reason", [
    ({"seeds": 0}, "at least one seed"), ({"seeds": True}, "a number of seeds"), ({"seeds": [1, 1]}, "twice"),
    ({"seeds": [0, -1]}, "integers >= 0"),
    ({"seeds": 2, "grid": {"seed": {"path": "seed", "values": [0, 1]}}}, "grid already sets the seed"),
    ({"seeds": 2, "optuna": {"space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}}, "Optuna study"),
])
def test_bad_seeds_are_refused_naming_the_field(tmp_path, extra, reason):
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, **extra))
    assert err.value.field == "seeds" and reason in err.value.reason


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", ".hidden", "a..b", "..", "x y"])
def test_a_sweep_name_that_is_not_one_folder_is_refused_before_anything_runs(tmp_path, name):
    with pytest.raises(ConfigError) as err:
        run_sweep(_spec(tmp_path, name=name), results=tmp_path / "results", workdir=tmp_path / "runs")
    assert err.value.field == "name" and "not a sweep name" in err.value.reason
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError) as err:  # the same name given to one trial, as a lone run's override would
        trial_from_dict(tiny(), [f"sweep={name}"])
    assert err.value.field == "sweep"


def test_a_sweep_name_set_by_an_axis_is_refused_naming_the_point(tmp_path):
    with pytest.raises(ConfigError) as err:
        expand(load_spec(_spec(tmp_path, grid={"where": {"levels": {"away": {"sweep": "../elsewhere"}}}})))
    assert err.value.field == "point where=away: sweep"


def test_sweep_names_of_letters_digits_dashes_underscores_and_dots_are_kept(tmp_path):
    for name in ("allocation-text", "eval_synthetic_5e7", "v1.2"):
        assert load_spec(_spec(tmp_path, name=name)).name == name
        assert trial_from_dict(tiny(), [f"sweep={name}"]).sweep == name


def test_a_sweep_launched_compiled_keeps_its_run_ids_and_its_finished_trials(tmp_path, capsys):
    path = _spec(tmp_path, grid={"rho": {"path": "budget.rho", "values": [0.5, 0.8]}}, launch={"executor": "debug"})
    where = {"results": tmp_path / "results", "workdir": tmp_path / "runs", "analyse": False}
    eager = run_sweep(path, **where)
    assert eager.count("completed") == 2
    records = {p: p.read_text() for p in (tmp_path / "results" / "t" / "runs").glob("*.json")}
    planned = run_sweep(path, dry_run=True, compile_="cudagraphs").planned
    assert [p.run_id for p in planned] == [p.run_id for p in eager.planned]
    assert {p.trial.train.compile for p in planned} == {"cudagraphs"}
    again = main(["sweep", str(path), "--compile", "true", "--no-analysis", "--results", str(where["results"]),
                  "--workdir", str(where["workdir"])])
    assert again == 0 and {p: p.read_text() for p in records} == records  # found done, not trained again
    study = _spec(tmp_path, optuna={"n_trials": 1, "space": {"optim.lr": {"type": "float", "low": 1e-3,
                                                                          "high": 1e-2}}})
    capsys.readouterr()
    for flag, value in (("--compile", "true"), ("--max-parallel", "2")):  # a study's own spec says how it runs
        assert main(["sweep", str(study), flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_a_sweep_is_not_extended_on_a_rebuilt_corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    docs = [f"Document {i} is about {['apples', 'rivers', 'kings', 'ships'][i % 4]} and what they do. " * 4
            for i in range(200)]
    (folder / "a.txt").write_text("\n\n".join(docs))
    data = {"source": "files", "path": str(folder), "val_fraction": 0.2, "tokenizer_docs": 200}
    path = _spec(tmp_path, trial=tiny(budget={"total_params": 400_000, "rho": 0.8}, data=data),
                 grid={"rho": {"path": "budget.rho", "values": [0.5]}}, launch={"executor": "debug"})
    where = {"results": tmp_path / "results", "workdir": tmp_path / "runs", "analyse": False}
    assert run_sweep(path, **where).count("completed") == 1
    spec = yaml.safe_load(path.read_text())
    spec["grid"]["rho"]["values"] = [0.5, 0.8]
    path.write_text(yaml.safe_dump(spec))
    (folder / "a.txt").write_text("\n\n".join(docs + ["A document an update added, about harbours. " * 4]))
    with pytest.raises(ConfigError) as err:
        run_sweep(path, **where)
    assert err.value.field == "data.path" and "rebuilt" in err.value.reason
    assert len(list((tmp_path / "results" / "t" / "runs").glob("*.json"))) == 1  # nothing was trained
    assert len(json.loads((tmp_path / "results" / "t" / "plan.json").read_text())["trials"]) == 1  # nor planned
    (folder / "a.txt").write_text("\n\n".join(docs))  # the old text back: the new trial may train
    planned = expand(load_spec(path))
    states = trial_states([p.run_id for p in planned], SweepPaths(where["results"], where["workdir"], "t"), print)
    check_same_text(planned, states, [p for p in planned if states[p.run_id]["state"] == "missing"])
