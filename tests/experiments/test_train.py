"""Real training runs on the CPU: records, accounting, exact resume after a kill, divergence, data parallel over
two processes (the same loss curve as one process, resumable on another number of processes)."""

import csv
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from engram.budget import count
from engram.model import EngramLM
from experiments.checkpoint import load_model
from experiments.config import resolve, trial_from_dict, trial_id
from engram_lab.cli import main
from engram_lab.records import portable_path, read_run_record, run_path
from experiments.module import KeepPreviousCheckpointIO, previous_checkpoint, resume_checkpoint
from experiments.train import ResultsUnwritable, TrialFailed, model_of, run_trial, trial_lock

from .tiny import tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    trial = trial_from_dict(tiny())
    record = run_trial(trial, results=root / "results", workdir=root / "runs")
    return trial, record, root


def test_tiny_trial_completes_and_learns(trained):
    trial, record, root = trained
    assert record["status"] == "completed", record["reason"]
    m = record["metrics"]
    assert m["val_loss"] < 0.9 * m["unigram_entropy"]
    curve = [loss for _, loss in m["val_curve"]]
    assert len(curve) == 3 and curve[-1] < curve[0]
    assert set(m["val_loss_by_category"]) <= set(m["data"]["categories"])
    # 60 steps: the steady rate leaves out the first 10 (start-up), the overall rate counts them
    assert m["tokens_per_second_steady"] > 0 and m["tokens_per_second"] > 0
    assert m["startup_s"] > 0 and m["warmup_s"] is not None and m["warmup_s"] < record["wall_time_s"]
    assert min(m["validation_s"], m["checkpoint_s"]) > 0
    phases = [m["startup_s"], m["steps_s"], m["between_steps_s"], m["save_s"]]  # validation, checkpoints in between
    assert min(phases) > 0 and sum(phases) < record["wall_time_s"]
    path = root / "results" / "_runs" / "runs" / f"{record['run_id']}.json"
    assert read_run_record(path)["run_id"] == record["run_id"] == trial_id(resolve(trial))
    checkpoints = root / "runs" / "_runs" / record["run_id"] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "last.previous.ckpt"]


def test_a_trial_at_rho_0_trains_on_the_top_k_experts_and_engram_rows(tmp_path):
    """The Engram-dominated end of the allocation grid: the router has nothing to choose."""
    trial = trial_from_dict(tiny(budget={"total_params": 150_000, "rho": 0.0}))
    record = run_trial(trial, results=tmp_path / "results", workdir=tmp_path / "runs")
    assert record["status"] == "completed", record["reason"]
    a = record["accounting"]
    assert a["experts"] == trial.model.moe.top_k and a["rho"] == 0.0 and a["engram_slots"] > 0
    assert record["metrics"]["val_loss"] < 0.9 * record["metrics"]["unigram_entropy"]


ON_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("compile_, fused", [
    pytest.param(True, None, id="compiled"),
    pytest.param(False, True, id="fused-adamw", marks=ON_GPU),
    pytest.param("cudagraphs", True, id="cuda-graphs", marks=ON_GPU)])
def test_a_trial_learns_as_the_plain_eager_one(tmp_path, monkeypatch, compile_, fused):
    """Compilation, CUDA graphs and the fused optimizer change how the steps run, never what they compute: each
    follows the validation curve of the eager trial with the per-parameter optimizer, on the same device (the
    GPU cases run where there is one: ``pytest tests/experiments/test_train.py -k plain_eager``)."""
    from experiments import optim

    curves = {}
    for name, mode, fuse in (("reference", False, None), ("variant", compile_, fused)):
        monkeypatch.setattr(optim, "_fusable", lambda params, fuse=fuse: fuse)
        trial = trial_from_dict(tiny(train={"compile": mode, "accelerator": "auto"}))
        record = run_trial(trial, results=tmp_path / name / "results", workdir=tmp_path / name / "runs")
        assert record["status"] == "completed", record["reason"]
        curves[name] = [loss for _, loss in record["metrics"]["val_curve"]]
    reference, variant = curves["reference"], curves["variant"]
    assert len(reference) == len(variant) == 3 and reference[-1] < 0.9 * reference[0]
    assert max(abs(a - b) for a, b in zip(reference, variant)) < 0.02 * reference[-1], curves


def test_record_accounting_equals_the_trained_model(trained):
    trial, record, root = trained
    model, tokenizer, saved = load_model(record["checkpoint"])
    acc = record["accounting"]
    c = count(model.config, seq_len=trial.data.seq_len)
    assert {k[len("params_"):]: v for k, v in acc.items() if k.startswith("params_")} == model.parameter_counts()
    assert acc["P_tot"] == c.P_tot and acc["P_act"] == c.P_act and acc["rho"] == c.rho
    assert acc["tokens"] == acc["steps"] * 8 * 64 == 60 * 8 * 64
    assert acc["total_flops"] == acc["tokens"] * c.train_flops_per_token
    assert saved.to_dict() == record["config"]
    assert isinstance(model, EngramLM) and tokenizer.vocab_size <= model.config.vocab_size


def test_completed_record_is_never_rewritten(trained):
    trial, record, root = trained
    path = root / "results" / "_runs" / "runs" / f"{record['run_id']}.json"
    before = path.stat().st_mtime_ns
    again = run_trial(trial, results=root / "results", workdir=root / "runs")
    assert again == json.loads(path.read_text()) and path.stat().st_mtime_ns == before


def test_a_run_trained_on_another_machine_is_trained_again_as_the_same_run(trained, tmp_path):
    trial, record, root = trained
    assert model_of(record, root / "runs") == str(Path(record["checkpoint"]))  # here: nothing trained
    assert not (root / "runs" / "retrained").exists()
    elsewhere = tmp_path / "runs"  # a machine without the sweep's checkpoints
    folder = Path(model_of(record, elsewhere))
    assert folder == elsewhere / "_runs" / record["run_id"] / "model" and (folder / "model.pt").exists()
    again = read_run_record(elsewhere / "retrained" / "_runs" / "runs" / f"{record['run_id']}.json")
    assert again["status"] == "completed" and again["config"] == record["config"]
    assert again["metrics"]["val_loss"] == pytest.approx(record["metrics"]["val_loss"], rel=1e-3)


def _train_cmd(config: Path, results: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "engram_lab", "train", str(config), "--results", str(results),
            "--workdir", str(workdir)]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    # the first checkpoint falls on a validation step (20): the resumed run must keep that point of its curve
    cfg = tiny(train={"tokens": 8 * 64 * 40, "checkpoint_every_steps": 20, "eval_every_tokens": 8 * 64 * 20})
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(cfg))
    rid = trial_id(resolve(trial_from_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # uninterrupted reference
    subprocess.run(_train_cmd(config, tmp_path / "ref", tmp_path / "ref_runs"), env=env, check=True,
                   capture_output=True, timeout=600)
    ref = read_run_record(tmp_path / "ref" / "_runs" / "runs" / f"{rid}.json")

    # the same run, killed (SIGKILL: no chance to clean up) once a checkpoint exists, then started again
    proc = subprocess.Popen(_train_cmd(config, tmp_path / "res", tmp_path / "runs"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "runs" / "_runs" / rid / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists() and proc.poll() is None, "the run ended before its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "res" / "_runs" / "runs" / f"{rid}.json").exists()
    subprocess.run(_train_cmd(config, tmp_path / "res", tmp_path / "runs"), env=env, check=True,
                   capture_output=True, timeout=600)
    records = list((tmp_path / "res").rglob("*.json"))
    assert len(records) == 1
    got = read_run_record(records[0])
    assert got["accounting"]["tokens"] == ref["accounting"]["tokens"]
    assert abs(got["metrics"]["val_loss"] - ref["metrics"]["val_loss"]) < 1e-6
    got_curve, ref_curve = got["metrics"]["val_curve"], ref["metrics"]["val_curve"]
    assert [t for t, _ in got_curve] == [t for t, _ in ref_curve]
    assert [v for _, v in got_curve] == pytest.approx([v for _, v in ref_curve], abs=1e-6)


def test_nan_loss_is_recorded_as_diverged(tmp_path):
    trial = trial_from_dict(tiny(optim={"lr": 1e8, "grad_clip": 0.0, "warmup_steps": 0}))
    record = run_trial(trial, results=tmp_path / "results", workdir=tmp_path / "runs")
    assert record["status"] == "diverged"
    assert isinstance(record["diverged_step"], int) and 0 <= record["diverged_step"] < 30
    assert "step" in record["reason"]
    stored = read_run_record(tmp_path / "results" / "_runs" / "runs" / f"{record['run_id']}.json")
    assert stored["status"] == "diverged" and stored["diverged_step"] == record["diverged_step"]


# -- data parallel: two gloo processes on the CPU ------------------------------------------------------------------

# checkpoints and validations at steps 4, 8 and 12: a resumed run keeps the validation of its checkpoint's step
PARALLEL = tiny(train={"tokens": 8 * 64 * 12, "eval_every_tokens": 8 * 64 * 4, "checkpoint_every_steps": 4,
                       "log_every_steps": 1, "accelerator": "cpu"})


def _config(tmp_path: Path, **train) -> Path:
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(tiny(train={**PARALLEL["train"], **train})))
    return config


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train_losses(workdir: Path) -> list[float]:
    """The per-step training loss a run logged (rank 0's CSV log: the loss of the whole step's batch)."""
    (path,) = workdir.rglob("metrics.csv")
    return [float(row["train_loss"]) for row in csv.DictReader(path.open()) if row["train_loss"]]


def _table(workdir: Path) -> torch.Tensor:
    (path,) = workdir.rglob("last.ckpt")
    state = torch.load(path, weights_only=True)["state_dict"]
    (table,) = [v for k, v in state.items() if k.endswith("tables.weight")]
    return table


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """PARALLEL trained by one process: the reference of the data-parallel runs."""
    root = tmp_path_factory.mktemp("one_process")
    record = run_trial(trial_from_dict(PARALLEL), results=root / "results", workdir=root / "runs")
    assert record["status"] == "completed", record["reason"]
    return record, root / "runs"


def _same_curves(got: dict, ref: dict) -> None:
    got_curve, ref_curve = got["metrics"]["val_curve"], ref["metrics"]["val_curve"]
    assert [t for t, _ in got_curve] == [t for t, _ in ref_curve]
    assert [v for _, v in got_curve] == pytest.approx([v for _, v in ref_curve], rel=1e-5)


def test_data_parallel_run_follows_one_process(tmp_path, one_process):
    """Two processes (Lightning's launcher, tables sharded over them) train on the one-process run's batches, half
    each: the same loss curve, one record, and checkpoints that hold whole tables."""
    ref, ref_runs = one_process
    out = subprocess.run(_train_cmd(_config(tmp_path, devices=2), tmp_path / "results", tmp_path / "runs"),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = list((tmp_path / "results").rglob("*.json"))
    assert len(records) == 1
    got = read_run_record(records[0])
    assert got["status"] == "completed" and got["config"]["train"]["devices"] == 2
    assert got["run_id"] == ref["run_id"]  # the same trial: a layout is not part of the run id
    assert got["accounting"]["steps"] == 12 and got["accounting"]["tokens"] == ref["accounting"]["tokens"]
    assert _train_losses(tmp_path / "runs") == pytest.approx(_train_losses(ref_runs), rel=1e-5)
    _same_curves(got, ref)
    assert _table(tmp_path / "runs").shape == _table(ref_runs).shape


class CrashAtStep8(L.Callback):
    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 8:
            raise RuntimeError("a crash after the step-8 checkpoint")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def test_a_one_process_run_resumes_on_two(tmp_path, one_process):
    """A run that dies after a checkpoint resumes on two processes started together (torchrun: rank 0 tells the other
    it holds the trial), each taking its rows of the checkpoint's whole tables, and ends where the one-process run
    does."""
    ref, _ = one_process
    results, runs = tmp_path / "results", tmp_path / "runs"
    with pytest.raises(TrialFailed):
        run_trial(trial_from_dict(PARALLEL), results=results, workdir=runs, callbacks=[CrashAtStep8()])
    out = subprocess.run(_torchrun("-m", "engram_lab", "train", str(_config(tmp_path, devices=2)), "--results",
                                   str(results), "--workdir", str(runs)),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restoring states from the checkpoint" in out.stderr
    (path,) = results.rglob("*.json")
    got = read_run_record(path)
    assert got["status"] == "completed" and got["run_id"] == ref["run_id"]
    _same_curves(got, ref)


def test_ranks_started_together_all_stop_when_the_trial_is_busy(tmp_path):
    """Another process holds the trial: rank 0 cannot take it and tells rank 1, so both stop at once."""
    config = _config(tmp_path, devices=2)
    rid = trial_id(resolve(trial_from_dict(yaml.safe_load(config.read_text()))))
    with trial_lock(tmp_path / "runs" / "_runs" / rid):
        out = subprocess.run(_torchrun("-m", "engram_lab", "train", str(config), "--results", str(tmp_path / "results"),
                                       "--workdir", str(tmp_path / "runs")),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "rank 0 found it locked" in out.stderr and "being trained by another process" in out.stderr
    assert not (tmp_path / "results").exists()


def test_records_name_checkpoints_inside_the_working_directory_relatively(tmp_path, monkeypatch):
    from engram_lab.records import portable_path

    (tmp_path / "runs" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "runs" / "model") == portable_path("runs/model") == "runs/model"
    assert portable_path("/elsewhere/model") == "/elsewhere/model"


# -- a resume checkpoint that does not load ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crashed_at_step_8(tmp_path_factory):
    """The work folder of PARALLEL crashed after its step-8 checkpoint: last.ckpt (step 8) and the one it replaced
    (step 4). Tests damage copies of it."""
    runs = tmp_path_factory.mktemp("crashed") / "runs"
    with pytest.raises(TrialFailed):
        run_trial(trial_from_dict(PARALLEL), results=runs.parent / "results", workdir=runs, callbacks=[CrashAtStep8()])
    return runs


def _copy_of(runs: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the work folder ``runs`` under ``tmp_path``, and its trial's checkpoint folder."""
    copy = shutil.copytree(runs, tmp_path / "runs")
    (checkpoints,) = copy.rglob("checkpoints")
    return copy, checkpoints


def _cut_in_half(path: Path) -> bytes:
    """``path`` as a kill in the middle of writing it leaves it; returns what is left."""
    left = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(left)
    return left


def test_a_cut_short_last_checkpoint_is_set_aside_and_the_one_before_resumed(tmp_path, crashed_at_step_8,
                                                                             one_process, caplog):
    ref, _ = one_process
    runs, checkpoints = _copy_of(crashed_at_step_8, tmp_path)
    last = checkpoints / "last.ckpt"
    left = _cut_in_half(last)
    with caplog.at_level(logging.WARNING, logger="experiments.module"):
        got = run_trial(trial_from_dict(PARALLEL), results=tmp_path / "results", workdir=runs)
    assert got["status"] == "completed", got["reason"]
    (kept,) = checkpoints.glob("last.ckpt.corrupt-*")
    assert kept.read_bytes() == left  # moved aside, not deleted
    assert got["resumed_from"] == {"checkpoint": portable_path(checkpoints / "last.previous.ckpt"), "step": 4,
                                   "set_aside": [portable_path(kept)]}
    assert read_run_record(run_path(tmp_path / "results", "", got["run_id"]))["resumed_from"] == got["resumed_from"]
    assert f"{last} cannot be loaded" in caplog.text and f"set aside as {kept}" in caplog.text
    assert "resuming from" in caplog.text and "at step 4" in caplog.text
    _same_curves(got, ref)


def test_with_no_checkpoint_that_loads_the_trial_starts_again_from_scratch(tmp_path, crashed_at_step_8, one_process,
                                                                          caplog):
    ref, _ = one_process
    runs, checkpoints = _copy_of(crashed_at_step_8, tmp_path)
    (checkpoints / "last.ckpt").write_bytes(b"")  # killed right after the file was opened
    _cut_in_half(checkpoints / "last.previous.ckpt")
    with caplog.at_level(logging.WARNING, logger="experiments.module"):
        got = run_trial(trial_from_dict(PARALLEL), results=tmp_path / "results", workdir=runs)
    assert got["status"] == "completed", got["reason"]
    kept = sorted(checkpoints.glob("*.corrupt-*"))
    assert [p.name.split(".corrupt-")[0] for p in kept] == ["last.ckpt", "last.previous.ckpt"]
    assert got["resumed_from"] == {"checkpoint": None, "step": 0, "set_aside": [portable_path(p) for p in kept]}
    assert "starting from scratch" in caplog.text
    _same_curves(got, ref)


def test_only_rank_zero_sets_a_checkpoint_aside_and_every_rank_makes_the_same_choice(tmp_path, caplog):
    last, previous = tmp_path / "last.ckpt", tmp_path / "last.previous.ckpt"
    torch.save({"global_step": 4}, previous)
    torch.save({"global_step": 8}, last)
    _cut_in_half(last)
    with caplog.at_level(logging.WARNING, logger="experiments.module"):
        assert resume_checkpoint(last, leader=False) == (previous, 4)
        assert last.exists() and not caplog.text  # the leader reports it
        assert resume_checkpoint(last, leader=True) == (previous, 4)
    assert not last.exists() and len(list(tmp_path.glob("last.ckpt.corrupt-*"))) == 1
    assert resume_checkpoint(last, leader=False) == (previous, 4)  # a rank that looks after the leader moved it


def test_a_checkpoint_save_cut_short_leaves_the_last_one_whole_and_the_one_before_kept(tmp_path, monkeypatch):
    writer, last = KeepPreviousCheckpointIO(), tmp_path / "last.ckpt"
    writer.save_checkpoint({"global_step": 4}, last)
    writer.save_checkpoint({"global_step": 8}, last)

    def disk_full_halfway(obj, f):
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_halfway)
    with pytest.raises(OSError, match="No space left"):
        writer.save_checkpoint({"global_step": 12}, last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True) == {"global_step": 8}
    assert torch.load(previous_checkpoint(last), weights_only=True) == {"global_step": 4}


# -- a results folder that cannot take the record ------------------------------------------------------------------

class CountSteps(L.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, *args) -> None:
        self.steps += 1


def _file_in_the_way(results: Path) -> None:
    results.write_text("not a folder")


def _read_only(results: Path) -> None:
    results.mkdir()
    results.chmod(0o555)


@pytest.mark.parametrize("make_unwritable", [
    _file_in_the_way,
    pytest.param(_read_only, marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")),
])
def test_an_unwritable_results_folder_is_refused_before_any_step(tmp_path, make_unwritable):
    results = tmp_path / "results"
    make_unwritable(results)
    steps = CountSteps()
    try:
        with pytest.raises(ResultsUnwritable) as err:
            run_trial(trial_from_dict(PARALLEL), results=results, workdir=tmp_path / "runs", callbacks=[steps])
    finally:
        results.chmod(0o755)
    assert f"cannot write run records to {results / '_runs' / 'runs'}" in str(err.value)
    assert steps.steps == 0 and not list(tmp_path.rglob("*.ckpt"))


def test_engram_lab_train_refuses_an_unwritable_results_folder_naming_it(tmp_path, capsys):
    config = _config(tmp_path)
    _file_in_the_way(tmp_path / "results")
    assert main(["train", str(config), "--results", str(tmp_path / "results"), "--workdir",
                 str(tmp_path / "runs")]) == 2
    assert f"cannot write run records to {tmp_path / 'results' / '_runs' / 'runs'}" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_first_non_finite_step_is_named_without_reading_the_loss_every_step():
    from types import SimpleNamespace

    from experiments.module import Diverged, LanguageModelTask

    task = SimpleNamespace(_first_non_finite=None)
    for step, loss in enumerate([2.5, 2.4, float("nan"), float("inf"), 2.3]):
        LanguageModelTask._track_non_finite(task, step, torch.tensor(loss))
    with pytest.raises(Diverged) as err:
        LanguageModelTask.check_finite(task)
    assert err.value.step == 2 and math.isnan(err.value.loss)


def test_a_heldout_source_is_scored_with_the_runs_tokenizer_and_never_trained_on(tmp_path):
    import gzip
    import random

    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees".split()

    def write(path: Path, make) -> str:
        with gzip.open(path, "wt") as f:
            for _ in range(300):
                f.write(json.dumps({"text": make()}) + "\n")
        return str(path)

    train = write(tmp_path / "train.jsonl.gz", lambda: " ".join(rng.choice(words) for _ in range(40)) + ".")
    # the same letters in words the model never saw
    letters = "".join(sorted(set("".join(words))))
    heldout = write(tmp_path / "other.jsonl.gz",
                    lambda: " ".join("".join(rng.choice(letters) for _ in range(5)) for _ in range(40)) + ".")
    data = {"source": "files", "path": train, "heldout": heldout, "vocab_size": 300, "tokenizer_docs": 300}
    record = run_trial(trial_from_dict(tiny(data=data)), results=tmp_path / "results", workdir=tmp_path / "runs")
    m = record["metrics"]
    assert record["status"] == "completed" and math.isfinite(m["heldout_loss"])
    assert m["heldout_loss"] > m["val_loss"] + 1.0  # far worse on text unlike the training text
    assert m["heldout_s"] > 0
    assert "heldout_loss" not in run_trial(trial_from_dict(tiny(data={**data, "heldout": None})),
                                           results=tmp_path / "results", workdir=tmp_path / "runs")["metrics"]
