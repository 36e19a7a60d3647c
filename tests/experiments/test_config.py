import json
from pathlib import Path

import pytest

from engram.config import ConfigError
from engram_lab.cli import main
from experiments.config import load_trial, resolve, trial_from_dict, trial_id
from experiments.optim import build_optimizers, lr_factor, OptimConfig, parameter_groups
from engram.model import EngramLM

from .tiny import tiny

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_resolves(path):
    trial = resolve(load_trial(path))
    assert trial.model.vocab_size == trial.data.vocab_size
    assert len(trial_id(trial)) == 12


def test_overrides_layer_over_yaml_and_are_validated():
    trial = trial_from_dict(tiny(), ["model.d_model=128", "model.engram.layers=[0,1]", "train.tokens=1e5"])
    assert trial.model.d_model == 128 and trial.model.engram.layers == [0, 1] and trial.train.tokens == 100000
    with pytest.raises(ConfigError) as err:
        trial_from_dict(tiny(), ["model.engram.layers=[5]"])
    assert err.value.field == "model.engram.layers"
    with pytest.raises(ConfigError) as err:
        trial_from_dict(tiny(), ["optim.lrr=1"])
    assert err.value.field == "optim.lrr"
    with pytest.raises(ConfigError) as err:
        trial_from_dict(tiny(train={"compute": 1e12}))
    assert err.value.field == "train.tokens"


def test_run_id_follows_the_resolved_config():
    a = resolve(trial_from_dict(tiny()))
    assert trial_id(a) == trial_id(resolve(trial_from_dict(tiny())))
    assert trial_id(a) != trial_id(resolve(trial_from_dict(tiny(seed=1))))
    # the device layout is how a trial runs, not what it trains: the same run id on any number of devices
    layout = {"devices": 2, "num_nodes": 2, "strategy": "ddp", "shard_tables": False}
    assert trial_id(a) == trial_id(resolve(trial_from_dict(tiny(train=layout))))


def test_the_batch_splits_evenly_over_devices():
    with pytest.raises(ConfigError) as err:
        trial_from_dict(tiny(train={"batch_size": 6, "devices": 4}))
    assert err.value.field == "train.batch_size"


def test_budget_places_the_model_and_infeasible_budgets_name_the_field():
    cfg = tiny(budget={"total_params": 400_000, "rho": 0.8})
    trial = resolve(trial_from_dict(cfg))
    assert trial.model.moe.n_routed > 4 and trial.model.engram.rows[0] != 499
    with pytest.raises(ConfigError) as err:
        resolve(trial_from_dict(tiny(budget={"total_params": 1000, "rho": 0.8})))
    assert err.value.field == "budget.total_params"


def test_tables_get_adam_at_five_times_the_rate_and_no_decay():
    model = EngramLM(resolve(trial_from_dict(tiny())).model)
    cfg = OptimConfig(lr=1e-3)
    opt = build_optimizers(model, cfg)
    tables = {id(p) for p in model.table_parameters()}
    table_groups = [g for g in opt.param_groups if any(id(p) in tables for p in g["params"])]
    assert len(table_groups) == 1
    assert table_groups[0]["lr"] == pytest.approx(5e-3) and table_groups[0]["weight_decay"] == 0.0
    assert all(id(p) in tables for p in table_groups[0]["params"])
    groups = parameter_groups(model, cfg)
    assert not any(n.endswith("norm.weight") for n, _ in groups["decay"])
    assert any(n == "embed.weight" for n, _ in groups["no_decay"])
    muon = parameter_groups(model, OptimConfig(optimizer="muon"))
    assert muon["muon"] and all(p.ndim == 2 for _, p in muon["muon"])
    assert len(build_optimizers(model, OptimConfig(optimizer="muon")).optimizers) == 3


def test_schedules():
    cfg = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.1)
    wsd = OptimConfig(schedule="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(50, 100, wsd) == 1.0 and lr_factor(90, 100, wsd) == pytest.approx(0.5)


def test_every_recorded_run_still_resolves_to_its_run_id():
    """Run ids name records, checkpoints and eval records: a config schema that grows (or a solver that changes) must
    not move the ids of the runs already in results/."""
    records = [json.loads(p.read_text()) for p in sorted(REPO.glob("results/*/runs/*.json"))]
    assert records, "results/ holds no run records"
    moved = [r["run_id"] for r in records if trial_id(resolve(trial_from_dict(r["config"]))) != r["run_id"]]
    assert not moved, f"recorded runs whose config now resolves to another id: {moved}"


def test_a_field_added_later_changes_the_run_id_only_away_from_its_old_value():
    def rid(*overrides):
        return trial_id(resolve(trial_from_dict(tiny(), list(overrides))))

    assert rid() == rid("data.synthetic.needle_queries=1") != rid("data.synthetic.needle_queries=2")
    assert rid() == rid("data.synthetic.category_weights.lookup=0") != rid("data.synthetic.category_weights.lookup=1")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "{}\n", "---\n"],
                         ids=["nothing", "blank lines", "comments", "empty mapping", "empty document"])
def test_an_empty_config_file_is_refused_naming_the_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_trial(path)
    assert err.value.field == str(path) and "empty" in err.value.reason
    # overrides do not make an empty file a config: it is still most likely the wrong file or one cut short
    with pytest.raises(ConfigError) as err:
        load_trial(path, ["train.tokens=1e5"])
    assert err.value.field == str(path)


def test_a_config_file_that_sets_one_field_takes_the_defaults_for_the_rest(tmp_path):
    path = tmp_path / "one_field.yaml"
    path.write_text("experiment: custom\n")
    assert load_trial(path) == trial_from_dict({})


def test_engram_lab_train_refuses_an_empty_config_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("an empty config reached training")

    monkeypatch.setattr("experiments.train.run_trial", no_training)
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert main(["train", str(path), "--results", str(tmp_path / "results")]) == 2
    assert f"{path}: the config file is empty" in capsys.readouterr().err
