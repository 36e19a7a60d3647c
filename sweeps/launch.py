"""Launching a sweep with submitit, and the driver that turns a spec into exactly one record per trial.

The driver (``engram-lab sweep SPEC``):

1. expands and resolves every trial (one bad point refuses the spec before anything is submitted);
2. under the sweep's driver lock, reads each trial's state — a record, a live trial lock, a job in the ledger (and
   SLURM's queue and accounting) — records a job that died, or was cancelled before it started, without a record
   as failed, reconciles the Optuna study, and submits what is missing (failed trials too with ``retry_failed``),
   appending the jobs to the ledger;
3. waits until every trial has a record, saying each one as it finishes, then fits and plots the sweep.

A record or a ledger line that cannot be read is said, naming the file (and line), and left as it is: the sweep
goes on without it and never writes over it.

A job trains one trial, or with ``launch.seeds_per_job`` several seeds of one point one after another (the model
compiles once, the text loads once). Each job is ``submitit.helpers.Checkpointable``: on preemption or timeout
submitit requeues it, and on requeue it skips its completed trials and resumes the next from its last checkpoint.
A trial is trained under an exclusive lock on its folder, so two drivers, or a job and its requeued twin, never
train it twice; a restarted driver finds running jobs in the ledger and waits for them instead of submitting again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import submitit

from engram.config import ConfigError, build
from experiments.config import TrialConfig
from engram_lab.records import RecordError, data_identity, read_run_record, run_path
from engram_lab.files import waiting_lock, write_atomic
from experiments.text import files_fingerprint
from experiments.train import TrialBusy, TrialFailed, run_trial, trial_dir, trial_lock
from sweeps.plan import format_plan, plan_rows
from sweeps.spec import PlannedTrial, SweepSpec, compiled_as, expand, load_spec, on_slurm, spec_text

SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
FINAL = ("completed", "failed", "diverged")
UNREADABLE = "unreadable"
SETTLED = (*FINAL, UNREADABLE)  # states only a person changes: the driver waits for nothing more from them
LEDGER_FIELDS = ("run_id", "job_id", "executor", "submitted")


@dataclass
class SweepPaths:
    results: Path
    workdir: Path
    name: str

    @property
    def work(self) -> Path:
        return self.workdir / self.name

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def ledger(self) -> Path:
        return self.work / "jobs.jsonl"

    def record(self, run_id: str) -> Path:
        return run_path(self.results, self.name, run_id)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


# -- the jobs ----------------------------------------------------------------------------------------------------


class TrialJob(submitit.helpers.Checkpointable):
    """Trials on a worker, one after another in one process: train each (resuming from its last checkpoint) and
    mirror its outcome in the study. A point's seeds in one job share its compiled model and the loaded text."""

    def __init__(self, trials: list[dict], params: list[dict], choices: dict, results: str, workdir: str,
                 storage: str, threads: int | None = None):
        self.trials, self.params, self.choices = trials, params, choices
        self.results, self.workdir, self.storage = results, workdir, storage
        self.threads = threads

    def __setstate__(self, state: dict) -> None:
        if "trial" in state:  # pickled by an older driver: one trial (and, older still, no thread count)
            state = {**state, "trials": [state.pop("trial")], "params": [state["params"]]}
        self.__dict__.update({"threads": None, **state})

    def __call__(self) -> list[dict]:
        if self.threads:
            # local trials share one machine's cores: each would otherwise start a thread per core for its CPU ops
            # and a compile worker per core, and together they would oversubscribe the machine many times over
            import torch
            import torch._inductor.config as inductor

            torch.set_num_threads(self.threads)
            inductor.compile_threads = self.threads
        outcomes, failed = [], []
        for trial, params in zip(self.trials, self.params):
            try:
                record = run_trial(build(TrialConfig, trial), self.results, self.workdir,
                                   on_record=lambda r, params=params: self._mirror(r, params))
            except TrialBusy as err:
                outcomes.append({"status": "busy", "reason": str(err)})
            except TrialFailed as err:  # recorded; the job's other trials still train
                failed.append(err.record)
            else:
                outcomes.append({k: record[k] for k in ("run_id", "status", "reason")})
        if failed:
            raise RuntimeError("; ".join(f"trial {r['run_id']} failed: {r['reason']}" for r in failed))
        return outcomes

    def _mirror(self, record: dict, params: dict) -> None:
        from optuna.distributions import CategoricalDistribution

        from sweeps.study import load, mirror_record

        try:
            distributions = {k: CategoricalDistribution(v) for k, v in self.choices.items()}
            # under the driver's lock: a driver reconciling the study at the same moment would add it twice
            with driver_lock(SweepPaths(Path(self.results), Path(self.workdir), record["sweep"])):
                mirror_record(load(record["sweep"], self.storage), record, params, distributions)
        except Exception as err:  # the record is the truth; the driver reconciles the study at its next start
            print(f"could not mirror {record['run_id']} in the Optuna study: {err}", file=sys.stderr)


# -- trial states ------------------------------------------------------------------------------------------------


def read_ledger(paths: SweepPaths, warn: Callable[[str], None]) -> dict[str, dict]:
    """The latest submission of each run id. A line that is not a job entry (the torn last line of a driver killed
    mid-append, say) is skipped and ``warn``-ed about, with the file and line: its job is not tracked."""
    latest: dict[str, dict] = {}
    if not paths.ledger.exists():
        return latest
    for number, line in enumerate(paths.ledger.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            warn(f"{paths.ledger}: line {number} is not JSON ({err}); skipped, so its job is not tracked")
            continue
        if not (isinstance(entry, dict) and all(k in entry for k in LEDGER_FIELDS)):
            warn(f"{paths.ledger}: line {number} is not a job entry (one needs {', '.join(LEDGER_FIELDS)}); "
                 "skipped, so its job is not tracked")
            continue
        latest[entry["run_id"]] = entry
    return latest


def append_ledger(paths: SweepPaths, entries: list[dict]) -> None:
    paths.work.mkdir(parents=True, exist_ok=True)
    # after a torn last line, an entry written straight on would be torn with it
    start = "\n" if _ends_mid_line(paths.ledger) else ""
    with open(paths.ledger, "a") as f:
        f.write(start + "".join(json.dumps(e) + "\n" for e in entries))
        f.flush()
        os.fsync(f.fileno())


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


@dataclass(frozen=True)
class SlurmState:
    """What SLURM says of one job: its state as SLURM words it (``CANCELLED by 0``) and whether it ever had a node."""

    text: str
    started: bool

    @property
    def name(self) -> str:
        return self.text.split()[0] if self.text.strip() else "UNKNOWN"


# A job that neither SLURM's queue nor its accounting lists
NOT_LISTED = SlurmState("none", started=False)


def slurm_states(job_ids: list[str]) -> dict[str, SlurmState]:
    """SLURM's state of each job (array tasks as ``<job>_<task>``): the controller's while it holds the job (from
    submission to MinJobAge after its end), else accounting's. A job that neither lists, when both answered, is
    :data:`NOT_LISTED`; one is left out when SLURM could not be asked."""
    if not job_ids:
        return {}
    ids = ",".join(job_ids)
    queue = _ask_slurm(["squeue", "-h", "--states=all", "-o", "%i|%T|%N", "-j", ids])
    accounting = _ask_slurm(["sacct", "-n", "-P", "-X", "-o", "JobID,State,NodeList", "-j", ids])
    states = {}
    for jid in job_ids:
        known = (queue or {}).get(jid) or (accounting or {}).get(jid)
        if known is not None:
            states[jid] = known
        elif queue is not None and accounting is not None:
            states[jid] = NOT_LISTED
    return states


def _ask_slurm(command: list[str]) -> dict[str, SlurmState] | None:
    """The jobs a ``JobID|State|NodeList`` listing names; None when the command did not answer."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue's answer when it holds none of the jobs asked about
        return {} if "Invalid job id specified" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        fields = line.split("|")
        if len(fields) == 3:
            jid, state, nodes = (f.strip() for f in fields)
            for one in _expand_array_ids(jid):
                states[one] = SlurmState(state or "UNKNOWN", started=nodes not in ("", "None assigned"))
    return states


def _expand_array_ids(jid: str) -> list[str]:
    """``123_[0-2,5%2]`` (array tasks not yet started, listed together) -> 123_0, 123_1, 123_2, 123_5."""
    if "_[" not in jid:
        return [jid]
    base, ranges = jid.split("_[", 1)
    ids = []
    for part in ranges.rstrip("]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return ids


def _local_alive(job_id: str) -> bool:
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # a job that died is a zombie until the process that started it (this driver, often) reaps it: not alive
    try:
        stat = Path(f"/proc/{int(job_id)}/stat").read_text()
    except OSError:
        return True  # no /proc to ask (not Linux): the signal test is all there is
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lock_held(paths: SweepPaths, run_id: str) -> bool:
    """Whether a live process is training the trial now (its folder lock cannot be taken)."""
    run_dir = trial_dir(paths.workdir, paths.name, run_id)
    if not (run_dir / ".lock").exists():
        return False
    try:
        with trial_lock(run_dir):
            return False
    except TrialBusy:
        return True


def trial_states(run_ids: list[str], paths: SweepPaths, warn: Callable[[str], None]) -> dict[str, dict]:
    """{run_id: {"state": completed|failed|diverged|unreadable|running|queued|lost|missing, "record"?, "job"?,
    "detail"}}; ``warn`` hears of ledger lines that cannot be read.

    ``unreadable``: the trial's record is there but is not a record (``detail`` names the file and says why); it is
    left as it is, for a person to look at, and the trial is not run again over it.
    ``lost``: the last job ended (or vanished) without a record — it failed, was cancelled or its node died."""
    ledger = read_ledger(paths, warn)
    slurm = slurm_states([e["job_id"] for e in ledger.values() if e["executor"] == "slurm"])
    out = {}
    for rid in run_ids:
        path = paths.record(rid)
        job = ledger.get(rid)
        try:
            record = read_run_record(path) if path.exists() else None
        except RecordError as err:
            out[rid] = {"state": UNREADABLE, "job": job, "detail": f"{err}; move it aside to run the trial again"}
            continue
        newer = record is not None and (job is None or record["created"] >= job["submitted"])
        if record is not None and (record["status"] == "completed" or newer):
            out[rid] = {"state": record["status"], "record": record, "job": job, "detail": record.get("reason")}
        elif lock_held(paths, rid):
            out[rid] = {"state": "running", "job": job, "detail": "trial lock held"}
        elif job is None:
            out[rid] = {"state": record["status"] if record else "missing", "record": record, "job": None,
                        "detail": record.get("reason") if record else None}
        elif job["executor"] == "slurm":
            out[rid] = {"job": job, **_slurm_trial_state(job["job_id"], slurm.get(job["job_id"]))}
        elif job["executor"] == "local" and _local_alive(job["job_id"]):
            out[rid] = {"state": "running", "job": job, "detail": f"local process {job['job_id']}"}
        else:
            out[rid] = {"state": "lost", "job": job, "detail": f"{job['executor']} job {job['job_id']} ended "
                                                               "without a record"}
    return out


def _slurm_trial_state(job_id: str, slurm: SlurmState | None) -> dict:
    """The state and detail of a trial without a record whose last job is the SLURM job ``job_id``."""
    if slurm is None:
        return {"state": "running", "detail": "SLURM state unknown: squeue or sacct did not answer"}
    if slurm.name in SLURM_ACTIVE:
        return {"state": "queued" if slurm.name == "PENDING" else "running", "detail": f"SLURM {slurm.text}"}
    if slurm is NOT_LISTED and "_" in job_id:
        return {"state": "lost", "detail": f"SLURM job {job_id} was cancelled before it started (SLURM state: none; "
                                           "Slurm forgets a pending array task cancelled on its own, in its queue "
                                           "and in its accounting)"}
    if slurm is NOT_LISTED:
        return {"state": "lost", "detail": f"SLURM job {job_id} is listed neither in SLURM's queue nor in its "
                                           "accounting"}
    if slurm.name == "CANCELLED" and not slurm.started:
        return {"state": "lost", "detail": f"SLURM job {job_id} was cancelled before it started (SLURM state: "
                                           f"{slurm.text})"}
    return {"state": "lost", "detail": f"SLURM job {job_id} ended {slurm.text}"}


def record_lost(paths: SweepPaths, p: PlannedTrial, detail: str) -> dict:
    """The failed record of a trial whose job ended without writing one (cancelled, killed, node failure)."""
    record = {
        "run_id": p.run_id, "sweep": paths.name, "experiment": p.trial.experiment, "axes": p.axes,
        "seed": p.trial.seed, "status": "failed", "reason": detail, "diverged_step": None,
        "config": p.trial.to_dict(), "accounting": {}, "metrics": {}, "checkpoint": None, "wall_time_s": None,
        "device": None, "versions": {}, "git_commit": None, "created": now(),
    }
    write_atomic(paths.record(p.run_id), record)
    return record


def driver_lock(paths: SweepPaths):
    """Serialises the check-and-submit step of concurrent drivers of one sweep, and their study updates with those
    of the trial jobs (each waits for the other)."""
    return waiting_lock(paths.work / ".driver.lock")


# -- executors ---------------------------------------------------------------------------------------------------


def make_executor(spec: SweepSpec, paths: SweepPaths, cluster: str) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=str(paths.logs / "%j"), cluster=cluster)  # never let it guess
    s = spec.launch.slurm
    params = {"timeout_min": s.time_min, "nodes": s.nodes, "tasks_per_node": s.tasks_per_node,
              "cpus_per_task": s.cpus_per_task, "name": f"engram-{spec.name}"}
    gpus = s.gpus_per_node
    if cluster == "local" and not gpus:
        import torch

        # submitit hides every GPU from a local job that asks for none: the trials would train on the CPU
        gpus = 1 if torch.cuda.is_available() else 0
    if gpus:
        params["gpus_per_node"] = gpus
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    if cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in (("partition", s.partition), ("account", s.account),
                                                    ("qos", s.qos), ("constraint", s.constraint)) if v})
        params["slurm_array_parallelism"] = s.array_parallelism
        if s.nodes * s.tasks_per_node > 1:  # a rank that dies takes the others down, not left waiting on it
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        if s.additional:
            params["slurm_additional_parameters"] = dict(s.additional)
        if s.setup:
            params["slurm_setup"] = list(s.setup)
    executor.update_parameters(**params)
    return executor


def job_batches(spec: SweepSpec, todo: list[PlannedTrial]) -> list[list[PlannedTrial]]:
    """The trials of each job: one each, or with ``launch.seeds_per_job`` a point's seeds together (in the order of
    ``todo``, up to that many per job)."""
    n, axis = spec.launch.seeds_per_job, spec.seed_axis
    if n == 1 or axis is None:
        return [[p] for p in todo]
    filling: dict[str, list[PlannedTrial]] = {}  # each point's batch that still has room
    batches = []
    for p in todo:
        point = json.dumps({k: v for k, v in p.axes.items() if k != axis.name}, sort_keys=True, default=str)
        if point not in filling or len(filling[point]) == n:
            filling[point] = []
            batches.append(filling[point])
        filling[point].append(p)
    return batches


def _jobs(spec: SweepSpec, batches: list[list[PlannedTrial]], paths: SweepPaths, storage: str,
          executor_kind: str = "debug") -> list[TrialJob]:
    from sweeps.study import grid_choices, param_value

    choices = grid_choices(spec)  # the study's search space: one for every trial of the sweep
    # SLURM confines each job to its own cores; local jobs split the machine's between the jobs run at once
    threads = max(1, (os.cpu_count() or 1) // spec.launch.max_parallel) if executor_kind == "local" else None
    return [TrialJob([p.trial.to_dict() for p in batch], [{k: param_value(v) for k, v in p.axes.items()}
                                                         for p in batch],
                     choices, str(paths.results), str(paths.workdir), storage, threads) for batch in batches]


def submit(spec: SweepSpec, paths: SweepPaths, batches: list[list[PlannedTrial]], storage: str,
           executor_kind: str, submitted: list | None = None) -> list[tuple[list[PlannedTrial], object]]:
    """Submit one job per batch of trials (SLURM: job arrays in chunks of ``max_array_size``; local: one process
    each) and ledger every trial with its job."""
    if not batches:
        return []
    executor = make_executor(spec, paths, executor_kind)
    jobs = []
    chunk = spec.launch.slurm.max_array_size if executor_kind == "slurm" else len(batches)
    for start in range(0, len(batches), chunk):
        part = batches[start:start + chunk]
        with executor.batch():
            handles = [executor.submit(job) for job in _jobs(spec, part, paths, storage, executor_kind)]
        jobs.extend(zip(part, handles))
    append_ledger(paths, [{"run_id": p.run_id, "job_id": str(j.job_id), "executor": executor_kind,
                           "submitted": now()} for batch, j in jobs for p in batch])
    if submitted is not None:
        submitted.extend(jobs)
    return jobs


# -- the driver --------------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    planned: list[PlannedTrial]
    states: dict[str, dict]

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s["state"] == state)


def prepare(spec: SweepSpec, paths: SweepPaths, planned: list[PlannedTrial]) -> None:
    """The plan and the spec beside the records: what the sweep meant to run, and how."""
    rows = [{"run_id": p.run_id, "axes": p.axes} for p in planned]
    write_atomic(paths.results / spec.name / "plan.json", {"sweep": spec.name, "experiment": spec.experiment,
                                                          "spec": spec.source, "trials": rows})
    (paths.results / spec.name / "spec.yaml").write_text(spec_text(spec))


def sync(spec: SweepSpec, paths: SweepPaths, planned: list[PlannedTrial], storage: str, retry_failed: bool,
         warn: Callable[[str], None]) -> tuple[dict[str, dict], list[PlannedTrial]]:
    """States of every trial, lost jobs recorded as failed, the study reconciled, and what to submit now."""
    from sweeps.study import open_study, reconcile

    states = trial_states([p.run_id for p in planned], paths, warn)
    for p in planned:
        s = states[p.run_id]
        if s["state"] == "lost":
            states[p.run_id] = {"state": "failed", "record": record_lost(paths, p, s["detail"]), "job": s["job"],
                                "detail": s["detail"]}
    reconcile(open_study(spec, storage), spec, planned, states)
    todo = [p for p in planned
            if states[p.run_id]["state"] == "missing" or (retry_failed and states[p.run_id]["state"] == "failed")]
    return states, todo


def check_same_text(planned: list[PlannedTrial], states: dict[str, dict], todo: list[PlannedTrial]) -> None:
    """Refuse, before the plan is written or anything submitted, to add trials on other text to a sweep whose
    completed runs recorded the text they were trained on: a corpus rebuilt under the same path (an updated package)
    moves documents between the splits, and the new runs' losses would not be on the old runs' scale. A path this
    process cannot read (data on the compute nodes only) is not checked."""
    recorded: dict[str, dict[str, str]] = {}  # data settings -> {text fingerprint: a run id}
    for p in planned:
        record = states[p.run_id].get("record") if states[p.run_id]["state"] == "completed" else None
        text = ((record or {}).get("metrics") or {}).get("data", {}).get("text_fingerprint")
        if text:
            recorded.setdefault(_settings(record["config"]["data"]), {}).setdefault(text, p.run_id)
    now: dict[str, str | None] = {}
    for p in todo:
        data = dataclasses.asdict(p.trial.data)
        seen = recorded.get(_settings(data))
        if not seen or data["source"] != "files":
            continue
        if data["path"] not in now:
            try:
                now[data["path"]] = files_fingerprint(data["path"])
            except FileNotFoundError:
                now[data["path"]] = None
        text = now[data["path"]]
        if text is not None and text not in seen:
            raise ConfigError("data.path", f"{data['path']} holds other text (fingerprint {text}) than this sweep's "
                                           f"completed runs were trained on ({', '.join(seen)}; run "
                                           f"{next(iter(seen.values()))}): the corpus was rebuilt. Put the old files "
                                           "back, or train this text as a new sweep (another name)")


def _settings(data: dict) -> str:
    return json.dumps(data_identity(data), sort_keys=True, default=str)


def first_seeds_first(spec: SweepSpec, todo: list[PlannedTrial]) -> list[PlannedTrial]:
    """Every point's first seed, then every point's second, and so on, within each level of the first axis that has
    named levels (a compute budget, say: they finish one after the other); the plan's order otherwise.

    A compiled trial's kernels are cached by shape, and the seeds of a point share its shape: started together, each
    would compile it again; started after the first, they find it compiled."""
    axis = spec.seed_axis
    if axis is None:
        return list(todo)
    seed_rank = {seed: i for i, seed in enumerate(axis.values)}
    outer = next((a for a in spec.axes if a.levels and a is not axis), None)
    outer_rank = {key: i for i, key in enumerate(outer.keys())} if outer is not None else {}
    return sorted(todo, key=lambda p: (outer_rank.get(p.axes.get(outer.name), 0) if outer else 0,
                                       seed_rank.get(p.trial.seed, len(seed_rank))))


def run_sweep(spec_path: str | Path, results: str | Path = "results", workdir: str | Path = "runs",
              executor: str | None = None, retry_failed: bool = False, dry_run: bool = False, wait: bool = True,
              analyse: bool = True, poll_s: float = 5.0, timeout_s: float | None = None, echo=print,
              compile_: bool | str | None = None, max_parallel: int | None = None) -> SweepOutcome:
    """Plan, submit and (unless ``wait=False``) see a grid sweep through; see the module docstring. ``echo`` hears
    the plan, then one line for each trial as it finishes. ``compile_`` overrides every trial's ``train.compile``
    and ``max_parallel`` the spec's ``launch.max_parallel`` (grid sweeps): finished trials stay finished, the rest
    train that way."""
    from sweeps.study import default_storage_url

    spec = load_spec(spec_path)
    for flag, value, field in (("--compile", compile_, "train.compile"),
                               ("--max-parallel", max_parallel, "launch.max_parallel")):
        if spec.is_study and value is not None:
            raise ConfigError(flag, f"applies to grid sweeps; set {field} in the study's spec instead")
    if max_parallel is not None:
        try:
            spec = dataclasses.replace(spec, launch=dataclasses.replace(spec.launch, max_parallel=max_parallel))
        except ConfigError as err:
            raise ConfigError("--max-parallel", err.reason) from None
    if spec.is_study:
        from sweeps.optuna_study import run_study

        return run_study(spec, Path(results), Path(workdir), executor, dry_run, wait, poll_s, timeout_s, echo)
    kind = executor or spec.launch.executor
    planned = expand(spec)
    if kind == "slurm":
        planned = [on_slurm(p, spec.launch.slurm) for p in planned]
    if compile_ is not None:
        planned = [compiled_as(p, compile_) for p in planned]
    echo(format_plan(spec, plan_rows(spec, planned)))
    if dry_run:
        return SweepOutcome(planned, {p.run_id: {"state": "planned"} for p in planned})
    paths = SweepPaths(Path(results), Path(workdir), spec.name)
    storage = spec.launch.storage or default_storage_url(workdir, spec.name)
    warn = _once(echo)  # the ledger is read at every poll; a line that cannot be read is said once
    started = time.time()
    submitted: list = []
    with driver_lock(paths):
        states, todo = sync(spec, paths, planned, storage, retry_failed, warn)
        check_same_text(planned, states, todo)
        prepare(spec, paths, planned)
        _report_states(states, echo)
        progress = Progress(planned, states, echo)
        if kind == "debug":
            pass  # trained below, in this process
        elif kind == "local":
            queue = job_batches(spec, first_seeds_first(spec, todo))
            start = queue[:max(0, spec.launch.max_parallel - jobs_at_work(states))]
            submit(spec, paths, start, storage, "local", submitted)
            todo = queue[len(start):]
        else:
            submit(spec, paths, job_batches(spec, todo), storage, "slurm", submitted)
            todo = []
    if kind == "debug":
        for batch in job_batches(spec, todo):
            with driver_lock(paths):
                append_ledger(paths, [{"run_id": p.run_id, "job_id": str(os.getpid()), "executor": "debug",
                                       "submitted": now()} for p in batch])
            try:
                _jobs(spec, [batch], paths, storage)[0]()
            except RuntimeError as err:
                echo(f"{', '.join(p.label() for p in batch)}: {err}")
            progress.update(trial_states([p.run_id for p in batch], paths, warn))
        todo = []
    if not wait:
        return SweepOutcome(planned, trial_states([p.run_id for p in planned], paths, warn))
    try:
        states = _wait(spec, paths, planned, storage, todo, submitted, poll_s, timeout_s, progress, warn)
    except TimeoutError:
        echo(throughput(progress.states.values(), started, time.time()))
        raise
    submitted.clear()  # submitit's job handles look at their files when deleted: now, not at interpreter shutdown
    outcome = SweepOutcome(planned, states)
    unreadable = outcome.count(UNREADABLE)
    echo(f"sweep {spec.name}: " + ", ".join(f"{outcome.count(s)} {s}" for s in FINAL)
         + (f", {unreadable} {UNREADABLE}" if unreadable else ""))
    echo(throughput(states.values(), started, time.time()))
    if analyse and outcome.count("completed"):
        _analyse(paths, spec, echo)
    return outcome


def jobs_at_work(states: dict[str, dict]) -> int:
    """Jobs running or queued; a job training several trials counts once."""
    return len({(s.get("job") or {}).get("job_id", rid) for rid, s in states.items()
                if s["state"] in ("running", "queued")})


def _wait(spec, paths, planned, storage, queue, submitted, poll_s, timeout_s, progress, warn) -> dict[str, dict]:
    """Poll until every trial has settled, feeding the local queue (of job batches) as processes finish."""
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        with driver_lock(paths):
            states, _ = sync(spec, paths, planned, storage, retry_failed=False, warn=warn)
            if queue:
                start = queue[:max(0, spec.launch.max_parallel - jobs_at_work(states))]
                submit(spec, paths, start, storage, "local", submitted)
                queue = queue[len(start):]
        progress.update(states)
        pending = [rid for rid, s in states.items() if s["state"] not in SETTLED]
        if not pending and not queue:
            return states
        if deadline and time.time() > deadline:
            raise TimeoutError(f"sweep {spec.name}: {len(pending)} trials still running after {timeout_s} s")
        time.sleep(poll_s)


def throughput(states, started: float, ended: float) -> str:
    """The training FLOPs of the trials completed between ``started`` and ``ended`` (this driver's run) over that
    wall time, as a share of one device's dense bf16 peak: how well the sweep as a whole used the GPU, start-up,
    validation and idle time included."""
    from engram.device import peak_flops

    done = [s["record"] for s in states if s["state"] == "completed"
            and datetime.datetime.fromisoformat(s["record"]["created"]).timestamp() >= int(started)]  # to the second
    if not done:
        return "throughput: no trial completed in this run"
    flops = sum(r["accounting"]["total_flops"] for r in done)
    wall = max(ended - started, 1e-9)
    line = f"throughput: {len(done)} trials, {flops:.3g} training FLOPs in {wall:.0f} s = {flops / wall:.3g} FLOP/s"
    devices = {r["device"] for r in done}
    try:
        peak = peak_flops(devices.pop()) if len(devices) == 1 else None
    except KeyError:
        peak = None
    return line + (f", {flops / wall / peak:.1%} of one {done[0]['device']}'s bf16 peak" if peak else "")


class Progress:
    """One line for each trial as it settles while the driver watches: its record written (completed, failed or
    diverged) or found unreadable. Trials that finished before the driver started are only counted."""

    def __init__(self, planned: list[PlannedTrial], states: dict[str, dict], echo):
        self.axes = {p.run_id: p.axes for p in planned}
        self.states = dict(states)
        self.said = {rid: _outcome(s) for rid, s in states.items() if s["state"] in FINAL}
        self.echo = echo
        self.update(states)  # an unreadable record is said at once

    def update(self, states: dict[str, dict]) -> None:
        self.states.update(states)
        new = [rid for rid, s in states.items() if _outcome(s) is not None and _outcome(s) != self.said.get(rid)]
        done = sum(1 for s in self.states.values() if s["state"] in SETTLED) - len(new)
        for rid in new:
            done += 1
            self.said[rid] = _outcome(states[rid])
            self.echo(f"[{done}/{len(self.states)}] {rid}  {format_axes(self.axes[rid])}: "
                      f"{_settled_summary(states[rid])}")


def _outcome(s: dict) -> str | None:
    """What tells one settled outcome of a trial from another: its record's creation time, or why it is unreadable."""
    if s["state"] in FINAL:
        return s["record"]["created"]
    return s["detail"] if s["state"] == UNREADABLE else None


def _settled_summary(s: dict) -> str:
    """``completed, val_loss 3.4521, 153.0 s``; ``failed (its reason)``; ``unreadable (the file, and why)``."""
    record = s.get("record") or {}
    loss, wall = (record.get("metrics") or {}).get("val_loss"), record.get("wall_time_s")
    parts = [s["state"]] + ([f"val_loss {loss:.4f}"] if loss is not None else []) \
        + ([f"{wall:.1f} s"] if wall is not None else [])
    return ", ".join(parts) + (f" ({s['detail']})" if s["state"] != "completed" and s.get("detail") else "")


def format_axes(axes: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in axes.items())


def _once(echo):
    said: set[str] = set()

    def say(message: str) -> None:
        if message not in said:
            said.add(message)
            echo(message)

    return say


def _report_states(states: dict[str, dict], echo) -> None:
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    echo("trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


def _analyse(paths: SweepPaths, spec: SweepSpec, echo) -> None:
    from analysis.paper_figures import analyse

    try:
        written = analyse(str(paths.results), [spec.name], steps=("fits", "tables", "figures"))
    except RecordError as err:  # a record that cannot be read, said above: fit once a person has dealt with it
        echo(f"analysis skipped: {err}")
        return
    for step, files in written.items():
        for f in files:
            echo(f"{step}: {f}")
