"""Loading records into the tidy table: every run kept, bad files named, evals placed in their columns."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import data, fits
from analysis.simulate import make_eval_record, make_run_record, simulate_u_curve, write_sweep
from engram_lab.records import RUN_FIELDS, RecordError, run_id, run_path


def _sweep(tmp_path, runs, evals=()):
    write_sweep(tmp_path, runs, evals)
    return tmp_path


def test_every_run_stays_in_the_table_with_its_status(tmp_path):
    runs = simulate_u_curve(np.random.default_rng(0), sweep="s")
    failed = make_run_record(sweep="s", experiment="allocation", status="failed", axes={"rho": 0.5, "budget": "2e20"})
    diverged = make_run_record(sweep="s", experiment="allocation", status="diverged",
                               axes={"rho": 0.6, "budget": "2e20"})
    df = data.load(_sweep(tmp_path, [*runs, failed, diverged]), "s")
    assert len(df) == len(runs) + 2
    row = df.set_index("run_id").loc[failed["run_id"]]
    assert row["status"] == "failed" and row["reason"] == "CUDA out of memory" and pd.isna(row["metrics.val_loss"])
    assert df.set_index("run_id").loc[diverged["run_id"], "diverged_step"] == 120
    f = fits.fit_all(df, n_boot=200)
    assert f["runs"]["excluded"] == 2 and f["runs"]["by_status"] == {"completed": len(runs), "failed": 1,
                                                                      "diverged": 1}
    assert {r["run_id"] for r in f["runs"]["excluded_runs"]} == {failed["run_id"], diverged["run_id"]}
    assert f["u_curve"]["budgets"]["2e20"]["n_excluded"] == 2
    assert f["u_curve"]["budgets"]["2e20"]["n"] == len(runs) // 2


def test_synthetic_records_carry_every_run_field():
    rec = make_run_record()
    assert tuple(rec) == RUN_FIELDS


@pytest.mark.parametrize("breakage, message", [
    (lambda p, rec: p.write_text("{ not json"), "cannot be read as JSON"),
    (lambda p, rec: p.write_text(json.dumps({k: v for k, v in rec.items() if k != "accounting"})), "lacks accounting"),
    (lambda p, rec: p.write_text(json.dumps({**rec, "status": "done"})), "status 'done'"),
    (lambda p, rec: p.write_text(p.read_text()[:200]), "cannot be read as JSON"),  # torn by a full disk
    (lambda p, rec: p.write_text(json.dumps({**rec, "metrics": {}})), "needs a finite metrics.val_loss"),
    (lambda p, rec: p.write_text(json.dumps({**rec, "metrics": {"val_loss": float("nan")}})), "finite"),
    (lambda p, rec: p.write_text(json.dumps({**rec, "metrics": {"val_loss": float("inf")}})), "finite"),
    (lambda p, rec: p.write_text(json.dumps({**rec, "config": {**rec["config"], "seed": 7}})),
     "config was changed after the run was recorded"),
    (lambda p, rec: p.write_text(json.dumps(make_run_record(sweep="s", seed=2))), "does not match the file name"),
])
def test_a_malformed_run_record_is_an_error_naming_the_file(tmp_path, breakage, message):
    rec = make_run_record(sweep="s")
    write_sweep(tmp_path, [make_run_record(sweep="s", seed=1), rec])
    path = run_path(tmp_path, "s", rec["run_id"])
    breakage(path, rec)
    with pytest.raises(RecordError, match=message) as err:
        data.load(tmp_path, ["s"])
    assert str(path) in str(err.value)


def test_a_record_of_another_sweep_is_not_pooled_into_this_one(tmp_path):
    write_sweep(tmp_path, [make_run_record(sweep="s")])
    stray = make_run_record(sweep="other")
    path = run_path(tmp_path, "s", stray["run_id"])
    path.write_text(json.dumps(stray))
    with pytest.raises(RecordError, match="belongs to sweep 'other'") as err:
        data.load(tmp_path, ["s"])
    assert str(path) in str(err.value)


def test_a_malformed_eval_record_is_an_error_naming_the_file(tmp_path):
    run = make_run_record(sweep="s")
    bad = make_eval_record(run, "vt", {"acc": 0.5})
    bad["metrics"] = {"acc": 0.5}  # a bare number where {"value", "stderr"} belongs
    paths = write_sweep(tmp_path, [run], [bad])
    with pytest.raises(RecordError, match="must be") as err:
        data.load(tmp_path, ["s"])
    assert str(paths[-1]) in str(err.value)


def test_evals_become_columns_with_stderr_and_a_memory_off_suffix(tmp_path):
    run = make_run_record(sweep="s")
    evals = [make_eval_record(run, "mq_niah", {"acc": (0.9, 0.01)}),
             make_eval_record(run, "mq_niah", {"acc": (0.5, 0.02)}, memory="off")]
    df = data.load(_sweep(tmp_path, [run], evals), ["s"])
    assert df.loc[0, "eval/mq_niah/acc"] == 0.9 and df.loc[0, "eval/mq_niah/acc_stderr"] == 0.01
    assert df.loc[0, "eval/mq_niah__memory_off/acc"] == 0.5
    assert data.split_eval_column("eval/mq_niah__memory_off/acc") == ("mq_niah", "acc", True)


def test_an_eval_without_its_run_is_reported_not_silently_dropped(tmp_path):
    run, lost = make_run_record(sweep="s"), make_run_record(sweep="s", seed=9)
    write_sweep(tmp_path, [run], [make_eval_record(lost, "vt", {"acc": 0.5})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = data.load(tmp_path, ["s"])
    assert any("no run record" in str(w.message) for w in caught)
    assert len(df.attrs["orphan_evals"]) == 1 and fits.fit_all(df, n_boot=100)["orphan_evals"]


def test_nested_fields_flatten_with_prefixes_and_lists_become_tuples(tmp_path):
    run = make_run_record(sweep="s", experiment="placement", axes={"layers": [1, 5]})
    df = data.load(_sweep(tmp_path, [run]), ["s"])
    assert df.loc[0, "axes.layers"] == (1, 5)
    assert df.loc[0, "config.model.engram.variant"] == "engram" and df.loc[0, "model"] == "engram"
    assert "accounting.rho" in df and "metrics.val_loss_by_category.static" in df and "versions.torch" in df


def test_missing_sweep_folder_is_an_error_and_find_sweeps_lists_folders(tmp_path):
    write_sweep(tmp_path, [make_run_record(sweep="a"), make_run_record(sweep="b")])
    assert data.find_sweeps(tmp_path) == ["a", "b"]
    assert len(data.load(tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="nope"):
        data.load(tmp_path, ["nope"])


def test_memory_and_twin_pairs_the_best_memory_run_with_its_moe_twin(tmp_path):
    def run(total, rho, seed, loss):
        rec = make_run_record(sweep="s", experiment="allocation", seed=seed, val_loss=loss,
                              axes={"rho": rho, "budget": f"{total:g}", "seed": seed})
        rec["config"]["budget"] = {"total_params": total, "rho": rho}
        rec["run_id"] = run_id(rec["config"])
        return rec

    runs = [run(2e7, 0.8, 0, 2.0), run(2e7, 1.0, 0, 2.1),  # the smaller budget: complete, but not the largest
            run(6e7, 0.7, 0, 1.9), run(6e7, 0.8, 1, 1.6), run(6e7, 1.0, 0, 1.95), run(6e7, 1.0, 1, 1.7),
            run(9e7, 0.8, 0, 1.5)]  # the largest budget has no twin yet: skipped
    best, twin = data.memory_and_twin(_sweep(tmp_path, runs), "s")
    assert (best["config"]["budget"], best["seed"]) == ({"total_params": 6e7, "rho": 0.8}, 1)
    assert (twin["config"]["budget"], twin["seed"]) == ({"total_params": 6e7, "rho": 1.0}, 1)
    with pytest.raises(LookupError, match="no budget"):
        data.memory_and_twin(_sweep(tmp_path / "other", runs[-1:]), "s")
