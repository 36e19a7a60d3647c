"""Optuna studies: workers ask the study for trials until it holds ``n_trials``, pruning on the validation curve.

The driver creates the storage and the study once (concurrent creation of a SQLite file crashes workers), fails
study trials left RUNNING by dead workers, and starts ``optuna.workers`` worker jobs. A worker that is requeued
takes up the trial it was running (found by its job id) and resumes it from its checkpoint. Like Optuna's own
``MaxTrialsCallback``, concurrent workers may finish up to ``workers - 1`` trials past ``n_trials``.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import lightning as L
import optuna
import submitit
from optuna.trial import TrialState

from engram.config import ConfigError
from engram_lab.files import write_atomic
from experiments.train import TrialBusy, TrialFailed, run_trial
from sweeps.launch import SweepOutcome, SweepPaths, append_ledger, driver_lock, lock_held, make_executor, now
from sweeps.plan import format_plan, plan_rows
from sweeps.spec import PlannedTrial, SweepSpec, spec_text, study_trial
from sweeps.study import default_storage_url, load, open_study, param_value, trials_by_run

RETIRED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class OptunaPruning(L.Callback):
    """Reports each validation loss to the Optuna trial (step = training tokens) and stops a pruned trial."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not module.val_curve:
            return
        tokens, loss = module.val_curve[-1]
        self.trial.report(loss, step=int(tokens))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {tokens} tokens (validation loss {loss:.4f})")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for path, d in space.items():
        if d["type"] == "float":
            params[path] = trial.suggest_float(path, d["low"], d["high"], log=d.get("log", False), step=d.get("step"))
        elif d["type"] == "int":
            params[path] = trial.suggest_int(path, d["low"], d["high"], log=d.get("log", False), step=d.get("step", 1))
        else:  # persistent storage takes scalar choices only: lists (layer placements) travel as JSON text
            by_param = {param_value(c): c for c in d["choices"]}
            params[path] = by_param[trial.suggest_categorical(path, list(by_param))]
    return params


def _job_key() -> str:
    return os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")) + ":" + \
        os.environ.get("SLURM_ARRAY_TASK_ID", str(os.getpid()))


class StudyWorker(submitit.helpers.Checkpointable):
    """Asks the study for trials and trains them until the study has ``n_trials``."""

    def __init__(self, spec: SweepSpec, results: str, workdir: str, storage: str):
        self.spec, self.results, self.workdir, self.storage = spec, results, workdir, storage

    def __call__(self) -> int:
        study = load(self.spec.name, self.storage)
        done = 0
        while True:
            trial = self._resume(study) or self._next(study)
            if trial is None:
                return done
            self._run(study, trial)
            done += 1

    def _resume(self, study: optuna.Study) -> optuna.Trial | None:
        """The trial this job was running before a requeue, if any."""
        key = _job_key()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("job") == key:
                return optuna.trial.Trial(study, t._trial_id)
        return None

    def _next(self, study: optuna.Study) -> optuna.Trial | None:
        taken = sum(1 for t in study.get_trials(deepcopy=False) if t.state in RETIRED + (TrialState.RUNNING,)
                    and t.user_attrs.get("reason") != "no live job")
        if taken >= self.spec.optuna.n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr("job", _job_key())
        return trial

    def _run(self, study: optuna.Study, trial: optuna.Trial) -> None:
        params = suggest(trial, self.spec.optuna.space)
        try:
            planned = study_trial(self.spec, params)
        except Exception as err:  # an infeasible point of the space is a failed trial, with its reason
            trial.set_user_attr("reason", str(err))
            study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("run_id", planned.run_id)
        try:
            record = run_trial(planned.trial, self.results, self.workdir, callbacks=[OptunaPruning(trial)])
        except TrialBusy as err:
            trial.set_user_attr("reason", str(err))
            study.tell(trial, state=TrialState.FAIL)
            return
        except TrialFailed as err:
            trial.set_user_attr("reason", err.record["reason"])
            pruned = isinstance(err.__cause__, optuna.TrialPruned)
            study.tell(trial, state=TrialState.PRUNED if pruned else TrialState.FAIL)
            return
        trial.set_user_attr("status", record["status"])
        if record["status"] == "completed":
            study.tell(trial, record["metrics"]["val_loss"])
        else:
            trial.set_user_attr("reason", record["reason"])
            study.tell(trial, state=TrialState.FAIL)


def _corners(spec: SweepSpec) -> list[dict]:
    """Every extreme of the search space (low/high of numbers, each choice), at most 64: the dry run's probe."""
    options = []
    for path, d in spec.optuna.space.items():
        options.append([(path, v) for v in ((d["low"], d["high"]) if d["type"] != "categorical" else d["choices"])])
    return [dict(c) for c in itertools.islice(itertools.product(*options), 64)]


def run_study(spec: SweepSpec, results: Path, workdir: Path, executor: str | None, dry_run: bool, wait: bool,
              poll_s: float, timeout_s: float | None, echo) -> SweepOutcome:
    corners: list[PlannedTrial] = [study_trial(spec, c) for c in _corners(spec)]
    echo(f"Optuna study {spec.name}: {spec.optuna.n_trials} trials, {spec.optuna.workers} workers; "
         f"space {list(spec.optuna.space)}; the corners of the space:")
    echo(format_plan(spec, plan_rows(spec, corners)))
    if dry_run:
        return SweepOutcome(corners, {p.run_id: {"state": "planned"} for p in corners})
    kind = executor or spec.launch.executor
    if kind == "slurm" and spec.launch.slurm.nodes * spec.launch.slurm.tasks_per_node > 1:
        raise ConfigError("launch.slurm.tasks_per_node", "a study worker asks for its trials one at a time in one "
                                                         "process: multi-process trials need a grid sweep")
    paths = SweepPaths(results, workdir, spec.name)
    storage = spec.launch.storage or default_storage_url(workdir, spec.name)
    (results / spec.name).mkdir(parents=True, exist_ok=True)
    (results / spec.name / "spec.yaml").write_text(spec_text(spec))
    with driver_lock(paths):
        study = open_study(spec, storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            rid = t.user_attrs.get("run_id")
            if rid is None or not lock_held(paths, rid):
                study._storage.set_trial_user_attr(t._trial_id, "reason", "no live job")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        worker = StudyWorker(spec, str(results), str(workdir), storage)
        if kind == "debug":
            worker()
            jobs = []
        else:
            ex = make_executor(spec, paths, kind)
            with ex.batch():
                jobs = [ex.submit(StudyWorker(spec, str(results), str(workdir), storage))
                        for _ in range(spec.optuna.workers)]
            append_ledger(paths, [{"run_id": f"worker-{i}", "job_id": str(j.job_id), "executor": kind,
                                   "submitted": now()} for i, j in enumerate(jobs)])
    deadline = time.time() + timeout_s if timeout_s else None
    while wait and jobs and not all(j.done() for j in jobs):
        if deadline and time.time() > deadline:
            raise TimeoutError(f"study {spec.name}: workers still running after {timeout_s} s")
        time.sleep(poll_s)
    study = load(spec.name, storage)
    runs = trials_by_run(study)
    names = {TrialState.COMPLETE: "completed", TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}
    states = {rid: {"state": names.get(ts[-1].state, ts[-1].state.name.lower())} for rid, ts in runs.items()}
    write_atomic(results / spec.name / "plan.json", {
        "sweep": spec.name, "experiment": spec.experiment, "spec": spec.source,
        "trials": [{"run_id": rid, "axes": ts[-1].params} for rid, ts in runs.items()]})
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in study.trials) else None
    echo(f"study {spec.name}: {len(study.trials)} trials" +
         (f"; best val_loss {best.value:.4f} at {best.params}" if best else ""))
    return SweepOutcome([], states)
