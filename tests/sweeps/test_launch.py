"""Launching sweeps for real: submitit on a one-node SLURM cluster (started by .ci/run) and the local executor.

One scenario per executor covers what a cluster does to a sweep: a trial requeued mid-run (SLURM) resumes from its
checkpoint, a killed trial is recorded as failed and completed by ``--retry-failed``, and a driver
killed mid-sweep is restarted and finishes with exactly one completed record per trial. Every test that needs the
cluster is marked ``slurm``.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from engram.config import ConfigError
from engram_lab.records import read_run_record
from sweeps.launch import run_sweep
from sweeps.spec import expand, load_spec
from sweeps.status import sweep_status
from sweeps.study import load, trials_by_run

from ..experiments.tiny import tiny

REPO = Path(__file__).resolve().parents[2]


def slurm_missing() -> str | None:
    """Why the SLURM tests cannot run here, or None: they need a node up and accounting (job states come from sacct)."""
    start = "start one with ../shared/slurm/start-local-slurm.sh --accounting, as .ci/run does"
    if not shutil.which("sinfo"):
        return f"no SLURM here (sinfo is not on the PATH): {start}"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if nodes.returncode != 0 or not any(s.strip() in ("idle", "mix", "alloc") for s in nodes.stdout.split()):
        return f"no SLURM cluster is running (sinfo: {(nodes.stderr or nodes.stdout).strip() or 'no node up'}): {start}"
    accounting = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True)
    if accounting.returncode != 0:
        return f"SLURM runs without accounting (sacct: {accounting.stderr.strip()}): {start}"
    return None


# Every test that needs the running cluster is marked `slurm` (`pytest -m slurm` selects them) and skips without it.
NO_SLURM = slurm_missing()
SKIP_WITHOUT_SLURM = pytest.mark.skipif(NO_SLURM is not None, reason=NO_SLURM or "")
EXECUTORS = [pytest.param("local"), pytest.param("slurm", marks=[pytest.mark.slurm, SKIP_WITHOUT_SLURM])]


def write_spec(tmp_path: Path, name: str, executor: str, steps: int = 40, seeds=(0, 1, 2), **slurm) -> Path:
    """A sweep of the tiny trial over ``seeds``; ``slurm``: more SLURM resources of each trial."""
    trial = tiny(train={"tokens": 8 * 64 * steps, "checkpoint_every_steps": 5, "eval_every_tokens": 0,
                        "deterministic": False})
    spec = {"name": name, "experiment": "test", "trial": trial,
            "grid": {"seed": {"path": "seed", "values": list(seeds)}},
            "launch": {"executor": executor, "max_parallel": 2,
                       "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                       "slurm": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 30, "array_parallelism": 2, **slurm}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def driver(spec: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "engram_lab", "sweep", str(spec), "--results", str(tmp_path / "results"),
           "--workdir", str(tmp_path / "runs"), "--no-analysis", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "driver.log", "a"), stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout} s for {what}")


def records(tmp_path: Path, name: str) -> dict[str, dict]:
    return {p.stem: read_run_record(p) for p in (tmp_path / "results" / name / "runs").glob("*.json")}


def stop(job_id: str, executor: str, run_dir: Path) -> None:
    """Kill a trial mid-run, as the OOM killer or a lost node would: SIGKILL to its trainer (the pid in the trial
    lock; the one-node cluster runs on this machine) and, for the local executor, to the job's own process. Through
    SLURM alone it cannot be done reliably: ``scancel --signal=KILL --full`` reaches srun, which hands the job step
    SIGTERM (submitit lets it pass) and kills it only after KillWait, time enough for a tiny trial to finish."""
    trainer_pid = int((run_dir / ".lock.holder").read_text().split()[1])
    for pid in (trainer_pid,) if executor == "slurm" else (int(job_id), trainer_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("executor", EXECUTORS)
def test_sweep_survives_requeue_cancel_and_a_dead_driver(tmp_path, executor):
    # On SLURM trial a must still be running when it is requeued after its first checkpoint: longer trials there
    spec_path = write_spec(tmp_path, f"launch-{executor}", executor, steps=400 if executor == "slurm" else 40)
    spec = load_spec(spec_path)
    ids = [p.run_id for p in expand(spec)]
    name = spec.name
    work = tmp_path / "runs" / name

    first = driver(spec_path, tmp_path)
    ledger = wait_for(lambda: len(read_ledger_at(work)) >= 2 and read_ledger_at(work), 240, "two submissions")
    a, b = ids[0], ids[1]
    # trial b: killed while it runs -> recorded failed
    wait_for(lambda: (work / b / ".lock.holder").exists() and (work / b / ".lock.holder").read_text().strip(), 240,
             "trial b to start")
    stop(ledger[b]["job_id"], executor, work / b)
    if executor == "slurm":
        # trial a: requeued by the cluster once it has a checkpoint -> resumes from it
        wait_for(lambda: (work / a / "checkpoints" / "last.ckpt").exists(), 300, "a checkpoint of trial a")
        subprocess.run(["scontrol", "requeue", ledger[a]["job_id"]], check=True)
    # the driver dies mid-sweep; a new one picks the sweep up and waits for the running jobs
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = driver(spec_path, tmp_path)
    assert second.wait(timeout=900) != 0  # one trial ended failed, so the sweep is not complete
    got = records(tmp_path, name)
    assert sorted(got) == sorted(ids)
    assert got[b]["status"] == "failed"
    assert "without a record" in got[b]["reason"] or "ended" in got[b]["reason"]
    assert got[a]["status"] == "completed" and got[ids[2]]["status"] == "completed"
    if executor == "slurm":
        logs = "".join(p.read_text() for p in (work / "logs").rglob(f"{ledger[a]['job_id']}*.err"))
        assert "Restoring states from the checkpoint" in logs

    third = driver(spec_path, tmp_path, "--retry-failed")
    assert third.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    got = records(tmp_path, name)
    assert len(got) == 3 and all(r["status"] == "completed" for r in got.values())
    study = load(name, spec.launch.storage)
    complete = {rid: [t for t in ts if t.state.name == "COMPLETE"] for rid, ts in trials_by_run(study).items()}
    assert sorted(complete) == sorted(ids) and all(len(ts) == 1 for ts in complete.values())


def read_ledger_at(work: Path) -> dict:
    path = work / "jobs.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                out[e["run_id"]] = e
    return out


def test_two_drivers_on_one_sqlite_storage_neither_duplicate_nor_lose(tmp_path):
    spec_path = write_spec(tmp_path, "twin", "local", steps=20)
    ids = sorted(p.run_id for p in expand(load_spec(spec_path)))
    procs = [driver(spec_path, tmp_path), driver(spec_path, tmp_path)]
    assert [p.wait(timeout=900) for p in procs] == [0, 0], (tmp_path / "driver.log").read_text()[-3000:]
    got = records(tmp_path, "twin")
    assert sorted(got) == ids and all(r["status"] == "completed" for r in got.values())
    study = load("twin", load_spec(spec_path).launch.storage)
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert sorted(t.user_attrs["run_id"] for t in finished) == ids
    assert len(read_ledger_at(tmp_path / "runs" / "twin")) == 3


@pytest.mark.slurm
@SKIP_WITHOUT_SLURM
def test_a_trial_of_two_tasks_trains_data_parallel_through_slurm(tmp_path):
    """A spec asking for two tasks per trial: submitit starts two processes on the node (gloo), Lightning takes its
    ranks from SLURM, and the sweep ends with one completed record, written once."""
    spec_path = write_spec(tmp_path, "two-tasks", "slurm", steps=8, seeds=(0,), tasks_per_node=2)
    outcome = run_sweep(spec_path, results=tmp_path / "results", workdir=tmp_path / "runs", analyse=False,
                        poll_s=1.0, timeout_s=600, echo=lambda *_: None)
    assert outcome.count("completed") == 1
    (record,) = records(tmp_path, "two-tasks").values()
    assert record["config"]["train"]["devices"] == 2 and record["accounting"]["steps"] == 8
    (job,) = read_ledger_at(tmp_path / "runs" / "two-tasks").values()
    logs = sorted(p.name for p in (tmp_path / "runs" / "two-tasks" / "logs").rglob(f"{job['job_id']}_*_log.out"))
    assert logs == [f"{job['job_id']}_0_log.out", f"{job['job_id']}_1_log.out"]  # one per task


@pytest.mark.slurm
@SKIP_WITHOUT_SLURM
def test_array_tasks_cancelled_while_pending_are_recorded_failed_and_retried(tmp_path):
    """Slurm forgets a pending array task cancelled on its own (neither squeue nor sacct lists it again), and
    accounts the rest of an array cancelled while pending as CANCELLED with no node. Neither is left running: status
    shows them lost, the driver records them failed, and ``--retry-failed`` trains them."""
    name = "cancelled"
    spec_path = write_spec(tmp_path, name, "slurm", steps=4, seeds=(0, 1), additional={"hold": True})
    folders = {"results": tmp_path / "results", "workdir": tmp_path / "runs"}
    run_sweep(spec_path, **folders, wait=False, analyse=False, echo=lambda *_: None)
    alone, rest = (p.run_id for p in expand(load_spec(spec_path)))
    ledger = read_ledger_at(tmp_path / "runs" / name)
    array = ledger[alone]["job_id"].split("_")[0]
    assert ledger[rest]["job_id"] == f"{array}_1"  # held: both tasks of one array pending
    subprocess.run(["scancel", ledger[alone]["job_id"]], check=True)
    subprocess.run(["scancel", array], check=True)

    status = sweep_status(name, **folders)
    for rid in (alone, rest):
        (row,) = [line for line in status.splitlines() if line.startswith(rid)]
        assert " lost " in row and "cancelled before it started" in row, status

    run_sweep(spec_path, **folders, wait=False, analyse=False, echo=lambda *_: None)
    got = records(tmp_path, name)
    assert {r["status"] for r in got.values()} == {"failed"}
    assert "cancelled before it started" in got[alone]["reason"] and "SLURM state: none" in got[alone]["reason"]
    assert "cancelled before it started" in got[rest]["reason"] and "SLURM state: CANCELLED" in got[rest]["reason"]

    spec_path = write_spec(tmp_path, name, "slurm", steps=4, seeds=(0, 1))  # the same trials, not held
    said = []
    outcome = run_sweep(spec_path, **folders, retry_failed=True, analyse=False, poll_s=1.0, timeout_s=600,
                        echo=said.append)
    assert outcome.count("completed") == 2, said
    got = records(tmp_path, name)
    for rid in (alone, rest):
        assert got[rid]["status"] == "completed"
        (line,) = [line for line in said if line.startswith("[") and rid in line]  # said as it finished
        assert "completed" in line and f"val_loss {got[rid]['metrics']['val_loss']:.4f}" in line


def test_the_slurm_mark_selects_every_test_that_needs_the_cluster_and_each_skips_without_one():
    no_slurm = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # sinfo, squeue and sacct out of reach
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-m", "slurm", __file__], capture_output=True,
                         text=True, cwd=REPO, env=no_slurm)
    skipped = {line.split("::", 1)[1].split()[0] for line in run.stdout.splitlines() if " SKIPPED " in line}
    assert skipped == {"test_sweep_survives_requeue_cancel_and_a_dead_driver[slurm]",
                       "test_a_trial_of_two_tasks_trains_data_parallel_through_slurm",
                       "test_array_tasks_cancelled_while_pending_are_recorded_failed_and_retried"}, run.stdout
    why = re.findall(r"SKIPPED \[(\d+)\] .*: no SLURM here \(sinfo is not on the PATH\): start one with", run.stdout)
    assert sum(map(int, why)) == 3, run.stdout  # -ra's summary: each skip says why


def test_a_local_job_that_died_unreaped_is_not_taken_for_alive():
    from sweeps.launch import _local_alive

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for: a zombie once it exits
    try:
        deadline = time.time() + 30
        while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        assert _local_alive(str(sleeper.pid)) and not _local_alive(str(dead.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
        dead.wait()


@pytest.mark.parametrize("budgets", [True, False])
def test_local_trials_start_each_points_first_seed_first_within_each_budget(tmp_path, budgets):
    from sweeps.launch import first_seeds_first

    grid = {"rho": {"path": "budget.rho", "values": [0.5, 1.0]}}
    if budgets:
        grid = {"budget": {"levels": {"small": {"budget.total_params": 4.0e+5},
                                      "large": {"budget.total_params": 8.0e+5}}}, **grid}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "order", "experiment": "allocation", "grid": grid, "seeds": 2,
                                         "trial": tiny(budget={"total_params": 4.0e+5, "rho": 0.8})},
                                        sort_keys=False))  # the levels in the order written
    spec = load_spec(spec_path)
    order = [(p.axes.get("budget"), p.axes["rho"], p.trial.seed) for p in first_seeds_first(spec, expand(spec))]
    if budgets:
        assert order == [("small", 0.5, 0), ("small", 1.0, 0), ("small", 0.5, 1), ("small", 1.0, 1),
                         ("large", 0.5, 0), ("large", 1.0, 0), ("large", 0.5, 1), ("large", 1.0, 1)]
    else:
        assert order == [(None, 0.5, 0), (None, 1.0, 0), (None, 0.5, 1), (None, 1.0, 1)]


def test_local_jobs_split_the_machines_cores_and_slurm_jobs_keep_their_own(tmp_path):
    from sweeps.launch import SweepPaths, _jobs

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "cores", "experiment": "test", "trial": tiny(), "seeds": 3,
                                         "launch": {"executor": "local", "max_parallel": 3}}))
    spec = load_spec(spec_path)
    paths = SweepPaths(tmp_path / "results", tmp_path / "runs", spec.name)
    batches = [[p] for p in expand(spec)]
    local = _jobs(spec, batches, paths, "sqlite://", "local")
    assert {j.threads for j in local} == {max(1, os.cpu_count() // 3)}
    assert {j.threads for j in _jobs(spec, batches, paths, "sqlite://", "slurm")} == {None}


def test_a_job_trains_a_points_seeds_one_after_another(tmp_path):
    """``seeds_per_job: 2``: seeds 0 and 1 of the point share a process, seed 2 has its own; each gets its own
    record, and the jobs count against max_parallel, not their trials (here ``--max-parallel 1`` over the spec's
    3: the second job starts when the first has written both its records)."""
    from sweeps.launch import job_batches

    spec_path = write_spec(tmp_path, "grouped", "local", steps=6)
    raw = yaml.safe_load(spec_path.read_text())
    raw["launch"].update({"max_parallel": 3, "seeds_per_job": 2})
    spec_path.write_text(yaml.safe_dump(raw))
    spec = load_spec(spec_path)
    assert [[p.trial.seed for p in b] for b in job_batches(spec, expand(spec))] == [[0, 1], [2]]
    said = []
    outcome = run_sweep(spec_path, results=tmp_path / "results", workdir=tmp_path / "runs", analyse=False,
                        poll_s=0.5, timeout_s=600, echo=said.append, max_parallel=1)
    assert outcome.count("completed") == 3, said
    ledger = read_ledger_at(tmp_path / "runs" / "grouped")
    jobs = [ledger[p.run_id]["job_id"] for p in expand(spec)]
    assert jobs[0] == jobs[1] != jobs[2]
    done = records(tmp_path, "grouped")
    assert {r["seed"] for r in done.values()} == {0, 1, 2}
    first_job_done = max(datetime.fromisoformat(r["created"]) for r in done.values() if r["seed"] < 2)
    assert datetime.fromisoformat(ledger[expand(spec)[2].run_id]["submitted"]) >= first_job_done
    with pytest.raises(ConfigError) as err:  # refused before anything more is written
        run_sweep(spec_path, results=tmp_path / "results", workdir=tmp_path / "runs", max_parallel=0)
    assert err.value.field == "--max-parallel" and ">= 1" in err.value.reason


def test_a_job_pickled_by_an_older_driver_still_runs_its_trial():
    from sweeps.launch import TrialJob

    job = TrialJob.__new__(TrialJob)
    job.__setstate__({"trial": {"seed": 1}, "params": {"seed": 1}, "choices": {}, "results": "r", "workdir": "w",
                      "storage": "sqlite://"})
    assert job.trials == [{"seed": 1}] and job.params == [{"seed": 1}] and job.threads is None
