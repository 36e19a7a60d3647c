"""Real training runs on the CPU: records, accounting, exact resume after a kill, divergence, data parallel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engram.budget import count
from engram.model import EngramLM
from experiments.checkpoint import load_model
from experiments.config import resolve, trial_from_dict, trial_id
from experiments.records import read_run_record
from experiments.train import run_trial

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
    path = root / "results" / "_runs" / "runs" / f"{record['run_id']}.json"
    assert read_run_record(path)["run_id"] == record["run_id"] == trial_id(resolve(trial))


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


def _train_cmd(config: Path, results: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "engram_lab", "train", str(config), "--results", str(results),
            "--workdir", str(workdir)]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    cfg = tiny(train={"tokens": 8 * 64 * 40, "checkpoint_every_steps": 10})
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


def test_two_process_data_parallel_on_gloo(tmp_path):
    cfg = tiny(train={"tokens": 8 * 64 * 2 * 12, "eval_every_tokens": 0, "devices": 2, "strategy": "ddp",
                      "accelerator": "cpu", "checkpoint_every_steps": 100})
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(_train_cmd(config, tmp_path / "results", tmp_path / "runs"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = list((tmp_path / "results").rglob("*.json"))
    assert len(records) == 1
    record = read_run_record(records[0])
    assert record["status"] == "completed"
    assert record["accounting"]["steps"] == 12 and record["accounting"]["tokens"] == 12 * 2 * 8 * 64
