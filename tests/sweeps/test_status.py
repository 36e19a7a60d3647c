"""What a sweep says while it runs, and what ``status`` and ``sweep`` do with a damaged ledger or record.

One real local sweep of two tiny trials, run one at a time, is shared by every test (each damages its own copy)."""

import datetime
import shutil
import time
from pathlib import Path

import pytest
import yaml

from engram.device import peak_flops
from engram_lab.cli import main
from engram_lab.records import read_run_record
from sweeps.launch import SweepPaths, append_ledger, read_ledger, run_sweep, throughput
from sweeps.spec import expand, load_spec
from sweeps.status import clock_shares, sweep_status, time_left

from ..experiments.tiny import tiny

NAME = "progress"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(folder, spec path, [(time, line) echoed by the sweep]) of a finished two-trial local sweep."""
    root = tmp_path_factory.mktemp("sweep")
    trial = tiny(train={"tokens": 8 * 64 * 4, "eval_every_tokens": 0, "val_tokens": 512, "deterministic": False})
    spec = {"name": NAME, "experiment": "test", "trial": trial, "grid": {"seed": {"path": "seed", "values": [0, 1]}},
            "launch": {"executor": "local", "max_parallel": 1}}  # one at a time: they finish far apart
    spec_path = root / f"{NAME}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    echoed = []
    outcome = run_sweep(spec_path, root / "results", root / "runs", analyse=False, poll_s=0.2, timeout_s=600,
                        echo=lambda line: echoed.append((time.time(), line)))
    assert outcome.count("completed") == 2, [line for _, line in echoed]
    return root, spec_path, echoed


def copy_of(finished, tmp_path: Path) -> tuple[Path, SweepPaths]:
    root, spec_path, _ = finished
    for folder in ("results", "runs"):
        shutil.copytree(root / folder, tmp_path / folder)
    shutil.copy(spec_path, tmp_path / spec_path.name)
    return tmp_path / spec_path.name, SweepPaths(tmp_path / "results", tmp_path / "runs", NAME)


def planned(spec_path: Path) -> list:
    return expand(load_spec(spec_path))


def test_a_blocking_sweep_prints_each_trial_when_it_finishes(finished):
    root, spec_path, echoed = finished
    paths = SweepPaths(root / "results", root / "runs", NAME)
    finish_times = {}
    for p in planned(spec_path):
        record = read_run_record(paths.record(p.run_id))
        lines = [(t, line) for t, line in echoed if line.startswith("[") and p.run_id in line]
        assert len(lines) == 1, echoed  # one line per finished trial
        when, line = lines[0]
        assert f"seed={p.axes['seed']}" in line and "completed" in line
        assert f"val_loss {record['metrics']['val_loss']:.4f}" in line and f"{record['wall_time_s']:.1f} s" in line
        finish_times[p.run_id] = (when, paths.record(p.run_id).stat().st_mtime)
    (first_said, _), (_, second_written) = sorted(finish_times.values(), key=lambda t: t[1])
    assert first_said < second_written  # said while the other trial still trained, not at the end


def test_the_sweep_ends_with_the_training_flops_it_completed_over_its_wall_time(finished):
    root, spec_path, echoed = finished
    paths = SweepPaths(root / "results", root / "runs", NAME)
    flops = sum(read_run_record(paths.record(p.run_id))["accounting"]["total_flops"] for p in planned(spec_path))
    lines = [line for _, line in echoed if line.startswith("throughput:")]
    assert len(lines) == 1 and lines[0].startswith(f"throughput: 2 trials, {flops:.3g} training FLOPs in ")
    assert "peak" not in lines[0]  # a CPU has no entry in the peak table: no share of it is claimed


def test_throughput_is_a_share_of_the_devices_peak_for_the_trials_of_this_run_only():
    started = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc).timestamp()

    def done(minutes: int) -> dict:
        created = datetime.datetime.fromtimestamp(started + 60 * minutes, datetime.timezone.utc).isoformat()
        return {"state": "completed", "record": {"created": created, "device": "NVIDIA H100 80GB HBM3",
                                                 "accounting": {"total_flops": 1.0e17}}}

    line = throughput([done(-5), done(1), done(9)], started, started + 1000)  # the first finished before this run
    assert line.startswith("throughput: 2 trials, 2e+17 training FLOPs in 1000 s")
    assert line.endswith(f"{2e17 / 1000 / peak_flops('H100'):.1%} of one NVIDIA H100 80GB HBM3's bf16 peak")


def test_status_shows_each_finished_trial_with_its_loss_and_wall_time(finished):
    root, spec_path, _ = finished
    paths = SweepPaths(root / "results", root / "runs", NAME)
    out = sweep_status(NAME, root / "results", root / "runs").splitlines()
    assert "wall_s" in out[1]
    for p in planned(spec_path):
        record = read_run_record(paths.record(p.run_id))
        (row,) = [line for line in out if line.startswith(p.run_id)]
        assert row.split()[:4] == [p.run_id, "completed", f"{record['metrics']['val_loss']:.4f}",
                                   f"{record['wall_time_s']:.1f}"]
        assert f"seed={p.axes['seed']}" in row


def test_a_torn_last_ledger_line_is_reported_with_its_line_and_skipped(finished, tmp_path):
    spec_path, paths = copy_of(finished, tmp_path)
    with open(paths.ledger, "a") as f:  # a driver killed mid-append
        f.write('{"run_id": "0123456789ab", "job_id": "12')
    torn = f"{paths.ledger}: line 3"

    out = sweep_status(NAME, paths.results, paths.workdir)
    assert torn in out and out.count(" completed ") == 2

    said = []
    outcome = run_sweep(spec_path, paths.results, paths.workdir, analyse=False, poll_s=0.2, timeout_s=60,
                        echo=said.append)
    assert outcome.count("completed") == 2 and any(torn in line for line in said)

    # the next submission lands on a line of its own: neither it nor the torn line is lost
    entry = {"run_id": "ba9876543210", "job_id": "77", "executor": "local",
             "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    append_ledger(paths, [entry])
    warned = []
    assert read_ledger(paths, warn=warned.append)["ba9876543210"] == entry
    assert len(warned) == 1 and torn in warned[0]
    assert paths.ledger.read_text().splitlines()[2] == '{"run_id": "0123456789ab", "job_id": "12'


def test_a_truncated_run_record_is_reported_with_its_file_and_kept(finished, tmp_path):
    spec_path, paths = copy_of(finished, tmp_path)
    damaged, intact = (p.run_id for p in planned(spec_path))
    record_file = paths.record(damaged)
    text = record_file.read_text()
    record_file.write_text(text[:len(text) // 2])
    ledger_before = paths.ledger.read_text()

    out = sweep_status(NAME, paths.results, paths.workdir)
    (row,) = [line for line in out.splitlines() if line.startswith(damaged)]
    assert " unreadable " in row and str(record_file) in row
    (row,) = [line for line in out.splitlines() if line.startswith(intact)]
    assert " completed " in row

    said = []
    outcome = run_sweep(spec_path, paths.results, paths.workdir, analyse=False, poll_s=0.2, timeout_s=60,
                        echo=said.append)
    assert outcome.count("completed") == 1 and outcome.states[damaged]["state"] == "unreadable"
    assert any(str(record_file) in line for line in said)
    assert record_file.read_text() == text[:len(text) // 2]  # kept for a person to look at, never overwritten
    assert paths.ledger.read_text() == ledger_before  # not trained again over it


def test_status_of_a_truncated_plan_names_the_file_instead_of_a_traceback(finished, tmp_path, capsys):
    _, paths = copy_of(finished, tmp_path)
    plan = paths.results / NAME / "plan.json"
    plan.write_text(plan.read_text()[:40])
    assert main(["status", NAME, "--results", str(paths.results), "--workdir", str(paths.workdir)]) == 2
    assert f"engram-lab status: {plan}: cannot be read as JSON" in capsys.readouterr().err


def test_time_left_goes_by_the_points_completed_trials_else_by_its_budgets():
    points = [("a", 0.5, 0, 100.0), ("a", 0.5, 1, 300.0), ("a", 0.5, 2, None), ("a", 0.8, 0, None),
              ("b", 0.5, 0, None)]
    trials = [{"run_id": f"r{i}", "axes": {"budget": b, "rho": rho, "seed": seed}}
              for i, (b, rho, seed, _) in enumerate(points)]
    states = {f"r{i}": {"state": "missing"} if wall is None else
              {"state": "completed", "record": {"wall_time_s": wall}} for i, (*_, wall) in enumerate(points)}
    line = time_left(trials, states)
    # a 0.5 seed 2: its point's median (200 s); a 0.8: budget a's (200 s); b: nothing of b has finished
    assert line.startswith(f"left: 3 trials not completed, about {400 / 3600:.2f} trial-hours")
    assert line.endswith("; 1 with no completed trial to go by")
    done = {run_id: {"state": "completed", "record": {"wall_time_s": 1.0}} for run_id in states}
    assert time_left(trials, done) is None


def test_time_left_at_the_pace_the_launch_kept_splits_the_clock_among_trials_run_side_by_side():
    # two trials of 100 s side by side (50 s of the clock each), then one alone (100 s): a median share of 50 s
    runs = [("2026-01-01T00:01:40+00:00", 100.0), ("2026-01-01T00:01:40+00:00", 100.0),
            ("2026-01-01T01:01:40+00:00", 100.0), (None, None)]
    trials = [{"run_id": f"r{i}", "axes": {"budget": "a", "rho": 0.5, "seed": i}} for i in range(len(runs))]
    states = {f"r{i}": {"state": "missing"} if wall is None else
              {"state": "completed", "record": {"wall_time_s": wall, "created": end}}
              for i, (end, wall) in enumerate(runs)}
    line = time_left(trials, states)
    assert f"about {100 / 3600:.2f} trial-hours one after another" in line
    assert f", {50 / 3600:.2f} hours at the pace they kept" in line
    # runs of 0-100 s and 50-150 s: 50 s alone and 25 s of the 50 s they overlap, each
    overlapping = [{"wall_time_s": 100.0, "created": "2026-01-01T00:01:40+00:00"},
                   {"wall_time_s": 100.0, "created": "2026-01-01T00:02:30+00:00"}]
    assert clock_shares(overlapping) == [75.0, 75.0]
    assert clock_shares([{"wall_time_s": 1.0}]) is None  # a record from before ``created`` existed
