"""One trial, end to end: resolve the config, train with Lightning (resuming if a checkpoint exists), evaluate,
export the model and write the run record — completed, failed or diverged — exactly once.

Layout: the record goes to ``<results>/<sweep>/runs/<run_id>.json`` (small, kept in git); checkpoints, logs and
the exported model to ``<workdir>/<sweep>/<run_id>/`` (large, not in git).

Data parallel, one process per device (Lightning's launcher, torchrun or SLURM tasks), every rank runs
:func:`run_trial`: rank 0 holds the trial's lock and alone writes the record and the exported model.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

from engram.budget import count
from engram.device import device_name, mfu
from experiments.config import TrainConfig, TrialConfig, resolve, trial_from_dict, trial_id
from engram_lab.files import exclusive_lock, write_atomic
from engram_lab.records import portable_path, read_json, run_path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for pkg in ("torch", "lightning", "numpy", "tokenizers", "triton"):
        try:
            found[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return found


class TrialBusy(RuntimeError):
    """Another process is running this trial now (it holds the trial's lock)."""


class ResultsUnwritable(RuntimeError):
    """The folder a trial's run record goes to cannot be written; raised before the trial trains."""


def check_writable(folder: Path) -> None:
    """Raise :class:`ResultsUnwritable` unless this process can create files in ``folder`` (created if missing).

    A record that cannot be written is found only when the trial ends, and the run is lost with it. The check
    writes a file there and removes it: permission bits alone miss read-only mounts, ACLs and a file in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ResultsUnwritable(f"cannot write run records to {folder} ({err.strerror or err}): nothing was "
                                "trained; make the folder writable or choose another results folder") from err


class TrialFailed(RuntimeError):
    """The trial raised; its failed record is written (``.record``) and the original error is the cause."""

    def __init__(self, record: dict):
        self.record = record
        super().__init__(record["reason"])


def trial_lock(run_dir: Path) -> exclusive_lock:
    """Exclusive lock on a trial's folder, released by the kernel when its holder dies (so a lock never goes stale).

    Two drivers, two array tasks or a requeued job and its ghost can never train the same trial at once; the
    holder's host, pid and SLURM job id are in ``.lock.holder``.
    """
    return exclusive_lock(run_dir / ".lock", TrialBusy, f"{run_dir} is being trained by another process")


def launch_rank(train: TrainConfig) -> int:
    """This process's global rank in a trial laid out as ``train`` says, as its launcher set it before
    torch.distributed exists (:func:`cluster_environment`)."""
    from lightning.pytorch.plugins.environments import LightningEnvironment

    env = cluster_environment(train.world)
    if isinstance(env, LightningEnvironment):  # rank 0 of a node starts the node's other ranks with LOCAL_RANK
        return env.node_rank() * train.devices + env.local_rank()
    return env.global_rank()


def cluster_environment(world: int):
    """Who started this trial's processes, as Lightning must see it: SLURM, one task per device (submitit owns
    requeueing, so Lightning's is off); torchrun; or Lightning itself, which starts a node's other ranks from rank 0
    (also inside a SLURM allocation whose tasks do not match the trial's devices)."""
    from lightning.pytorch.plugins.environments import (LightningEnvironment, SLURMEnvironment,
                                                        TorchElasticEnvironment)

    if SLURMEnvironment.detect() and os.environ["SLURM_NTASKS"] == str(world):
        return SLURMEnvironment(auto_requeue=False)
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    return LightningEnvironment()


def on_gpu(train: TrainConfig) -> bool:
    return torch.cuda.is_available() and train.accelerator != "cpu"


@contextlib.contextmanager
def claim_trial(run_dir: Path, env, train: TrainConfig):
    """The trial for this process's ranks: rank 0 holds its lock while it runs, and every rank raises
    :class:`TrialBusy` when rank 0 cannot take it.

    Ranks that a cluster launcher started together with rank 0 (SLURM tasks, torchrun) learn whether it got the lock
    over torch.distributed, set up here as Lightning would and then trained with by it: none of them trains alone,
    or waits for a rank 0 that never comes. The ranks Lightning's own launcher starts exist only once rank 0 holds
    the lock, and need no word from it."""
    from lightning.pytorch.plugins.environments import LightningEnvironment

    together = train.world > 1 and not isinstance(env, LightningEnvironment)
    if launch_rank(train) > 0:
        if together and not _rank_zero_holds(None, env, train):
            raise TrialBusy(f"{run_dir} is being trained by another process (rank 0 found it locked)")
        yield
        return
    with contextlib.ExitStack() as lock:
        try:
            lock.enter_context(trial_lock(run_dir))
        except TrialBusy:
            if together:
                _rank_zero_holds(False, env, train)
            raise
        if together:
            _rank_zero_holds(True, env, train)
        yield


def _rank_zero_holds(held: bool | None, env, train: TrainConfig) -> bool:
    """Rank 0's ``held`` on every rank, through the process group Lightning will train with (its backend, address
    and timeout)."""
    from torch.distributed.constants import default_pg_timeout

    device = torch.device("cuda", env.local_rank()) if on_gpu(train) else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         init_method=f"tcp://{env.main_address}:{env.main_port}",
                                         rank=env.global_rank(), world_size=env.world_size(),
                                         timeout=default_pg_timeout)
    flag = torch.tensor([1 if held else 0], device=device)
    torch.distributed.broadcast(flag, src=0)
    return flag.item() == 1


def trial_dir(workdir: str | Path, sweep: str, rid: str) -> Path:
    return Path(workdir) / (sweep or "_runs") / rid


def plan_steps(trial: TrialConfig) -> tuple[int, int]:
    """(optimizer steps, training tokens) for the trial's token or FLOPs budget; a step trains on ``batch_size``
    sequences however many devices share them."""
    per_step = trial.train.batch_size * trial.data.seq_len
    tokens = trial.train.tokens
    if tokens is None:
        tokens = trial.train.compute / count(trial.model, seq_len=trial.data.seq_len).train_flops_per_token
    steps = max(1, math.ceil(tokens / per_step))
    return steps, steps * per_step


def existing_record(results: str | Path, trial: TrialConfig) -> dict | None:
    resolved = resolve(trial)
    path = run_path(results, resolved.sweep, trial_id(resolved))
    return read_json(path) if path.exists() else None


def model_of(record: dict, workdir: str | Path = "runs") -> str:
    """The exported model folder of a completed run record, under ``workdir``. Where the run trained on another
    machine, its recorded config is trained again here (same run id, so eval and probe records still sit beside the
    sweep's record); the new run record goes to ``<workdir>/retrained/``, so the sweep's own record is kept as it was
    and the two runs' losses can be compared."""
    folder = trial_dir(workdir, record["sweep"], record["run_id"]) / "model"
    if (folder / "model.pt").exists():
        return str(folder)
    trial = trial_from_dict(record["config"])
    if trial_id(resolve(trial)) != record["run_id"]:
        raise RuntimeError(f"run {record['run_id']}: its recorded config no longer resolves to the same trial (the "
                           "budget solver or the defaults changed), so it cannot be trained again as that run")
    again = run_trial(trial, results=Path(workdir) / "retrained", workdir=workdir)
    if again["status"] != "completed":
        raise TrialFailed(again)
    return str(folder)


def run_trial(trial: TrialConfig, results: str | Path = "results", workdir: str | Path = "runs",
              callbacks: list | None = None, on_record=None) -> dict:
    """Train ``trial`` and return its run record. A completed record already on disk is returned untouched.

    ``callbacks`` are extra Lightning callbacks (an Optuna pruner, say); ``on_record(record)`` runs under the trial's
    lock once the record is written, whatever its status. Raises :class:`TrialBusy` when another process holds the
    trial, :class:`ResultsUnwritable` (before training) when its record could not be written, and
    :class:`TrialFailed` (after writing the failed record) when training raised.
    """
    resolved = resolve(trial)
    rid = trial_id(resolved)
    env = cluster_environment(resolved.train.world)
    with claim_trial(trial_dir(workdir, resolved.sweep, rid), env, resolved.train):
        if launch_rank(resolved.train) > 0:  # a data-parallel peer: rank 0 writes the record and reports it
            return _run_locked(resolved, rid, Path(results), Path(workdir), callbacks or [], env)
        try:
            record = _run_locked(resolved, rid, Path(results), Path(workdir), callbacks or [], env)
        except TrialFailed as err:
            if on_record is not None:
                on_record(err.record)
            raise
        if on_record is not None:
            on_record(record)
        return record


def heldout_loss(trainer, task, tokenizer, trial: TrialConfig) -> float:
    """Mean next-token loss (nats) of the trained model on the first ``train.val_tokens`` tokens of
    ``data.heldout``, read with the run's tokenizer, in float32 on the device that trained it (Lightning's teardown
    leaves the model on the CPU, where a 3e15 ladder trial spent 38-46 s on this score). Every rank runs the same
    batches (sharded tables serve their rows to each other inside the forward pass)."""
    import torch.nn.functional as F

    from experiments.data import ValidationSet, load_heldout

    split = load_heldout(trial.data, tokenizer, trial.train.val_tokens)
    device = trainer.strategy.root_device
    batches = torch.utils.data.DataLoader(ValidationSet(split, trial.data.seq_len, trial.train.val_tokens),
                                          batch_size=trial.train.batch_size, pin_memory=device.type == "cuda")
    task.to(device)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    task.model.eval()
    with torch.no_grad():
        for x, y, _ in batches:
            logits = task.model(x.to(device, non_blocking=True))
            total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device, non_blocking=True).flatten(),
                                     reduction="sum")
            count += y.numel()
    return float(total) / count


def _run_locked(resolved: TrialConfig, rid: str, results: Path, workdir: Path, callbacks: list, env) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    from engram.sharded import whole_state_dict
    from experiments.checkpoint import save_model
    from experiments.data import load_corpus
    from experiments.module import (CorpusDataModule, Diverged, KeepPreviousCheckpointIO, LanguageModelTask,
                                    StepCheckpoint, resume_checkpoint, set_aside_checkpoints)

    record_file = run_path(results, resolved.sweep, rid)
    if record_file.exists():
        previous = read_json(record_file)
        if previous.get("status") == "completed":
            return previous
    # every rank checks: one that went on alone would wait for a rank 0 that stopped here
    check_writable(record_file.parent)
    run_dir = trial_dir(workdir, resolved.sweep, rid)
    t = resolved.train
    leader = launch_rank(t) == 0  # the one rank that writes the record and the exported model
    ckpt_dir = run_dir / "checkpoints"
    resume_from, resume_step = resume_checkpoint(ckpt_dir / "last.ckpt", leader)
    set_aside = set_aside_checkpoints(ckpt_dir)
    steps, tokens = plan_steps(resolved)
    counts = count(resolved.model, seq_len=resolved.data.seq_len)
    started = time.time()
    base = {
        "run_id": rid, "sweep": resolved.sweep, "experiment": resolved.experiment, "axes": resolved.axes,
        "seed": resolved.seed, "config": resolved.to_dict(),
        "accounting": {**counts.as_record(), "tokens": tokens, "steps": steps,
                       "total_flops": tokens * counts.train_flops_per_token},
        "versions": versions(), "git_commit": git_commit(), "checkpoint": None,
        "resumed_from": None if resume_from is None and not set_aside else {
            "checkpoint": portable_path(resume_from) if resume_from else None, "step": resume_step,
            "set_aside": [portable_path(p) for p in set_aside]},
    }

    def finish(status: str, metrics: dict, reason: str | None = None, diverged_step: int | None = None) -> dict:
        record = {**base, "status": status, "reason": reason, "diverged_step": diverged_step, "metrics": metrics,
                  "wall_time_s": time.time() - started, "device": device_name(),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if leader:
            write_atomic(record_file, record)
        return record

    L.seed_everything(resolved.seed, workers=True, verbose=False)
    try:
        corpus = load_corpus(resolved.data, tokens + 1, t.val_tokens)
        compression = corpus.tokenizer.compression(resolved.model.vocab_size)
        task = LanguageModelTask(resolved, compression, steps, corpus.train.names)
        eval_every = max(1, t.eval_every_tokens // (t.batch_size * resolved.data.seq_len)) \
            if t.eval_every_tokens else steps
        loggers = [CSVLogger(run_dir, name="logs", version="")]
        if "tensorboard" in t.loggers:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
        if "wandb" in t.loggers:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(project="engram-lab", name=rid, save_dir=str(run_dir)))
        precision = t.precision
        if precision == "auto":
            precision = "bf16-mixed" if on_gpu(t) else "32-true"
        strategy = "auto"
        if t.world > 1 or t.strategy == "ddp":
            strategy = DDPStrategy(process_group_backend=None if on_gpu(t) else "gloo")
        checkpoint_io = KeepPreviousCheckpointIO()
        trainer = L.Trainer(
            default_root_dir=run_dir, max_steps=steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=strategy, precision=precision, logger=loggers,
            plugins=[env, checkpoint_io],
            callbacks=[StepCheckpoint(ckpt_dir, t.checkpoint_every_steps, eval_every), *callbacks],
            val_check_interval=eval_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
            enable_progress_bar=t.progress_bar,
            enable_model_summary=False, deterministic=t.deterministic, use_distributed_sampler=False,
            log_every_n_steps=t.log_every_steps,
        )
        data = CorpusDataModule(corpus, resolved)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*that ended before the epoch ended.*")
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")  # val_loss is reduced over ranks already
            trainer.fit(task, datamodule=data, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
            if not task.val_curve or task.val_curve[-1][0] != task.tokens_seen():
                trainer.validate(task, datamodule=data, verbose=False)
        heldout_started = time.perf_counter()
        heldout = heldout_loss(trainer, task, corpus.tokenizer, resolved) if resolved.data.heldout else None
        heldout_s = time.perf_counter() - heldout_started if heldout is not None else None
    except Diverged as err:
        return finish("diverged", {"diverged_loss": err.loss}, reason=str(err), diverged_step=err.step)
    except Exception as err:  # any other failure is recorded, then surfaces to the caller
        raise TrialFailed(finish("failed", {}, reason=f"{type(err).__name__}: {err}")) from err
    model_dir = run_dir / "model"
    save_started = time.perf_counter()
    state = whole_state_dict(task.model)  # every rank sends its rows of sharded tables to rank 0
    if leader:
        save_model(model_dir, task.model, resolved, corpus.tokenizer, state)
    save_s = time.perf_counter() - save_started
    tok_s = task.tokens_per_step * steps / max(task.train_seconds, 1e-9)
    steady_tok_s = task.steady_tokens_per_second() or tok_s
    metrics = {
        "val_loss": task.val_curve[-1][1],
        "val_loss_by_category": task.val_by_category,
        "val_curve": task.val_curve,
        "train_loss": sum(task.recent_losses) / max(1, len(task.recent_losses)),
        "unigram_entropy": corpus.validation.unigram_entropy(),
        **({"heldout_loss": heldout} if heldout is not None else {}),
        "tokens_per_second": tok_s,
        # without the first steps (compilation, allocator and cuDNN warm-up): what a longer run would sustain
        "tokens_per_second_steady": steady_tok_s,
        # from the trial's start to its first step: data (tokenizer, token cache), model and trainer set-up
        "startup_s": task.first_step_time - started if task.first_step_time else None,
        # from the first step to the steady rate: compilation and CUDA graph capture (less when this process compiled
        # the same shapes for an earlier trial)
        "warmup_s": task.warmup_seconds(),
        # where the rest of the wall time went: inside the training steps, between them (validation and step
        # checkpoints, each also timed alone, batches, Lightning's loop), the held-out score and the model's export
        "steps_s": task.train_seconds,
        "between_steps_s": task.between_seconds,
        "validation_s": task.validation_seconds,
        **({"heldout_s": heldout_s} if heldout_s is not None else {}),
        "checkpoint_s": checkpoint_io.seconds,
        "save_s": save_s,
        "mfu": mfu(steady_tok_s / t.world, counts.train_flops_per_token, device_name()),  # of each device's peak
        "data": corpus.info,
    }
    base["checkpoint"] = portable_path(model_dir)
    return finish("completed", metrics)
