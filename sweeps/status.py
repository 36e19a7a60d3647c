"""``engram-lab status``: each trial's state from its record, its trial lock, the job ledger with SLURM's queue and
accounting, and the Optuna storage; its validation loss and wall time once it has finished; the time the trials
left will take."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from engram_lab.records import read_json
from sweeps.launch import SweepPaths, format_axes, trial_states
from sweeps.study import default_storage_url, load


def _study_summary(name: str, url: str) -> str:
    try:
        study = load(name, url)
    except KeyError:  # optuna's answer for a name its storage lacks: a grid sweep, or a study not created yet
        return f"optuna: no study {name!r}"
    except Exception as err:  # the storage is unreachable: say so, the rest still stands
        return f"optuna: no study (the storage answered {type(err).__name__}: {err})"
    counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    return "optuna: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials")


def time_left(trials: list[dict], states: dict[str, dict]) -> str | None:
    """How long the trials not completed will take, by the completed trials of the same point (the same axes but
    the seed), or else of the same level of the first axis that is not the seed (a compute budget, say): one after
    another, by their median wall time; and at the pace the launch kept, by their median share of the clock (a
    trial's wall time split evenly among the trials that ran beside it, second by second). None when every trial is
    completed."""
    def groups(axes: dict) -> list:
        point = tuple((k, str(v)) for k, v in axes.items() if k != "seed")
        return [("point", point), ("level", point[:1])]

    completed = [(t, states[t["run_id"]]["record"]) for t in trials if states[t["run_id"]]["state"] == "completed"
                 and (states[t["run_id"]].get("record") or {}).get("wall_time_s") is not None]
    shares = clock_shares([record for _, record in completed])
    done = defaultdict(list)  # group: [(wall time, share of the clock or None)]
    for i, (t, record) in enumerate(completed):
        for group in groups(t["axes"]):
            done[group].append((record["wall_time_s"], None if shares is None else shares[i]))
    left = [t for t in trials if states[t["run_id"]]["state"] != "completed"]
    if not left:
        return None
    by_group = (next((done[g] for g in groups(t["axes"]) if done.get(g)), None) for t in left)
    found = [known for known in by_group if known is not None]  # each trial's completed ones to go by
    seconds = sum(statistics.median(wall for wall, _ in known) for known in found)
    line = (f"left: {len(left)} trials not completed, about {seconds / 3600:.2f} trial-hours one after another (the "
            "median wall time of completed trials of the same point, else of the same level of the first axis)")
    if shares is not None and found:
        paced = sum(statistics.median(share for _, share in known) for known in found)
        line += f", {paced / 3600:.2f} hours at the pace they kept (with as many side by side)"
    unknown = len(left) - len(found)
    return line + (f"; {unknown} with no completed trial to go by" if unknown else "")


def clock_shares(records: list[dict]) -> list[float] | None:
    """Each record's share of the clock: its run (from ``created``, when it ended, back by its wall time) cut where
    any other run starts or ends, each piece divided by the runs it overlaps. The shares add up to the time some
    run was going. None when a record has no ``created``."""
    try:
        runs = [(end - r["wall_time_s"], end) for r in records
                for end in [datetime.fromisoformat(r["created"]).timestamp()]]
    except (KeyError, TypeError, ValueError):
        return None
    events = sorted([(start, 1, i) for i, (start, _) in enumerate(runs)]
                    + [(end, 0, i) for i, (_, end) in enumerate(runs)])  # at one time, ends sort before starts
    shares, going, last = [0.0] * len(runs), set(), None  # going: the runs between the last event and this one
    for t, starts, i in events:
        for j in going:
            shares[j] += (t - last) / len(going)
        last = t
        if starts:
            going.add(i)
        else:
            going.discard(i)
    return shares


def sweep_status(sweep: str, results: str | Path = "results", workdir: str | Path = "runs") -> str:
    storage = None
    if sweep.endswith((".yaml", ".yml")):
        from sweeps.spec import load_spec

        spec = load_spec(sweep)
        sweep, storage = spec.name, spec.launch.storage
    paths = SweepPaths(Path(results), Path(workdir), sweep)
    plan_file = paths.results / sweep / "plan.json"
    if not plan_file.exists():
        raise FileNotFoundError(f"{plan_file} does not exist: launch the sweep first (engram-lab sweep SPEC)")
    plan = read_json(plan_file)
    trials = plan["trials"]
    problems: list[str] = []
    states = trial_states([t["run_id"] for t in trials], paths, warn=problems.append)
    lines = [f"sweep {sweep} ({plan.get('experiment', '')}): {len(trials)} trials",
             f"{'run_id':<12}  {'state':<10} {'val_loss':>8} {'wall_s':>8}  {'point':<40} detail"]
    for t in trials:
        s = states[t["run_id"]]
        record = s.get("record") or {}
        loss, wall = record.get("metrics", {}).get("val_loss"), record.get("wall_time_s")
        detail = s.get("detail") or (f"job {s['job']['job_id']}" if s.get("job") else "")
        lines.append(f"{t['run_id']:<12}  {s['state']:<10} {'-' if loss is None else format(loss, '.4f'):>8} "
                     f"{'-' if wall is None else format(wall, '.1f'):>8}  {format_axes(t['axes'])[:40]:<40} "
                     f"{detail or ''}")
    counts = Counter(s["state"] for s in states.values())
    lines.append("trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    left = time_left(trials, states)
    if left is not None:
        lines.append(left)
    lines.append(_study_summary(sweep, storage or default_storage_url(workdir, sweep)))
    lines.extend(problems)
    return "\n".join(lines)
