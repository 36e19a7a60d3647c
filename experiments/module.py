"""Lightning wrappers: the training task over :class:`engram.model.EngramLM` and the data module over a corpus."""

from __future__ import annotations

import datetime
import logging
import math
import os
import pickle
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from engram.compiled import compiled
from engram.compress import Compression
from engram.model import EngramLM
from engram.optim_tables import clip_grad_norm_
from engram.sharded import gather_rows, shard_of, shard_tables_, sharded_tables, whole_optimizer_state_
from experiments.config import TrialConfig
from experiments.data import PADDING, Corpus, TrainBatches, ValidationSet
from experiments.optim import build_optimizers, set_learning_rates

log = logging.getLogger(__name__)

STEADY_FROM = 10  # the steady training rate leaves out this process's first steps (compilation, warm-up)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"loss became {loss} at step {step}")


class LanguageModelTask(L.LightningModule):
    """Next-token training with the paper's parameter groups, step-addressed data and per-category validation.

    Optimization is manual so that the router-bias update runs before every optimizer step, the learning rate is
    set from the step alone (nothing else to restore on resume), and a non-finite loss stops the run at once.

    Data parallel (DDP over W ranks): each rank trains on 1/W of every step's batch. With ``train.shard_tables`` the
    Engram tables are split across the ranks (:mod:`engram.sharded`): DDP leaves them alone, each rank's table
    optimizer steps its own rows, and checkpoints hold whole tables and whole table moments, so a run resumes on
    any number of ranks.
    """

    def __init__(self, trial: TrialConfig, compression: Compression, total_steps: int, categories: list[str]):
        super().__init__()
        self.automatic_optimization = False
        self.trial = trial
        self.model = EngramLM(trial.model, compression)
        self.total_steps = total_steps
        self.categories = list(categories)
        self.tokens_per_step = trial.train.batch_size * trial.data.seq_len  # over all ranks
        self.val_curve: list[list[float]] = []  # [tokens, val_loss]
        self.val_by_category: dict[str, float] = {}
        self._recent_losses: list[torch.Tensor | float] = []  # the last 20 steps' losses, read when needed
        self._first_non_finite = None  # (step, loss) of the first non-finite loss, on the device until checked
        self.train_seconds = 0.0  # inside the training steps (from the batch's start to the step's end)
        self.between_seconds = 0.0  # from a step's end to the next one's start (validations, checkpoints, the loop)
        self.validation_seconds = 0.0
        self.synced_at: dict[int, float] = {}  # time.time() at the steps where the device was waited for
        self.first_step_time: float | None = None  # time.time() at this process's first step
        self._first_step = 0  # its global step (past 0 when resumed)
        self._step_start: float | None = None
        self._step_end: float | None = None

    def configure_model(self) -> None:
        # Lightning calls this on every rank once torch.distributed is up, before DDP wraps the module, a checkpoint
        # is restored or the optimizers are built: the moment to split the tables (once: fit and validate both call it)
        if (self.trial.train.shard_tables and self.trainer.world_size > 1 and self.model.hasher is not None
                and self.model.table_shards is None):
            shard_tables_(self.model)
            self._ddp_params_and_buffers_to_ignore = [name for name, _ in sharded_tables(self)]
        # gradient clipping's two kinds of parameters: a shard's norm is summed over the ranks, the rest is whole
        self._shards = [t.weight for t in self.model.memory_tables()] if self.model.table_shards is not None else []
        self._replicated = [p for p in self.model.parameters() if all(p is not s for s in self._shards)]
        # Engram's lookup runs eagerly ahead of the backbone (EngramLM.memory), so the loss compiles as one graph
        compile_ = self.trial.train.compile
        self._graphs = compile_ == "cudagraphs" and self.device.type == "cuda"
        self._loss = compiled(self.model.loss, cuda_graphs=self._graphs) if compile_ else self.model.loss

    def configure_optimizers(self):
        optimizers = build_optimizers(self.model, self.trial.optim)
        for member in optimizers.optimizers:
            whole_optimizer_state_(member, self.model)  # the tables' optimizer checkpoints whole moments
        return optimizers

    def tokens_seen(self) -> int:
        return self.global_step * self.tokens_per_step

    # -- training -------------------------------------------------------------------------------------------------
    # No step waits for the device: a host sync per step leaves a small model's GPU idle while Python prepares the
    # next one. The loss is checked for divergence every ``log_every_steps`` steps and before every validation and
    # checkpoint (the first non-finite step is tracked on the device, so the record names it exactly); the step
    # times are wall-clock between those waits.

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()
        if self._step_end is not None:
            self.between_seconds += self._step_start - self._step_end
        if self.first_step_time is None:
            self.first_step_time, self._first_step = time.time(), self.global_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        step = self.global_step
        lr_factor = set_learning_rates(opt.optimizer, step, self.total_steps, self.trial.optim)
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        out = self._loss(x, y, memory=self.model.memory(x))
        losses = torch.stack([out.loss.detach(), out.lm_loss.detach()])  # a copy: graph outputs are overwritten
        if self.trainer.world_size > 1:
            # the global batch's losses (the mean over ranks, each a mean over as many tokens): every rank logs the
            # run's loss and sees a non-finite one at the same step, so all stop together, none left waiting
            torch.distributed.all_reduce(losses)
            losses /= self.trainer.world_size
        loss, loss_value = losses
        self._track_non_finite(step, loss)
        self.manual_backward(out.loss)
        if self.trial.optim.grad_clip > 0:  # clips row-sparse table gradients too, which torch's clipping cannot
            sharded = self.model.table_shards
            clip_grad_norm_(self._replicated, self.trial.optim.grad_clip, sharded=self._shards,
                            group=sharded.sg.group if sharded is not None else None)
        self.model.update_router_biases()
        opt.step()
        opt.zero_grad(set_to_none=True)
        self._recent_losses = (self._recent_losses + [loss_value])[-20:]
        if step % self.trial.train.log_every_steps == 0 or step == self.total_steps - 1:
            self.check_finite()
            tok_s = self.tokens_per_step * (step + 1) / max(self.train_seconds, 1e-9)
            self.log_dict({"train_loss": loss_value, "lr_factor": lr_factor, "tokens": float(self.tokens_seen()),
                           "tok_s": tok_s}, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        self._end_step()
        return out.loss

    def _track_non_finite(self, step: int, loss: torch.Tensor) -> None:
        if self._first_non_finite is None:
            self._first_non_finite = torch.full((2,), float("nan"), device=loss.device)
        this = torch.stack([loss.new_full((), float(step), dtype=torch.float32), loss.float()])  # no host copy
        first = torch.isnan(self._first_non_finite[0]) & ~torch.isfinite(loss)
        self._first_non_finite = torch.where(first, this, self._first_non_finite)

    def check_finite(self) -> None:
        """Raise :class:`Diverged` at the first step whose loss was not finite (this waits for the device)."""
        if self._first_non_finite is not None:
            step, loss = self._first_non_finite.tolist()
            if not math.isnan(step):
                raise Diverged(int(step), loss)

    @property
    def recent_losses(self) -> list[float]:
        return [float(v) for v in self._recent_losses]

    def _end_step(self) -> None:
        # here, not in on_train_batch_end: callbacks (a step checkpoint) run before the module's hook
        step = self.global_step  # steps done
        if step % self.trial.train.log_every_steps == 0 or step in (STEADY_FROM, self.total_steps):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.synced_at[step] = time.time()
        self._step_end = time.perf_counter()
        self.train_seconds += self._step_end - self._step_start

    def steady_tokens_per_second(self) -> float | None:
        """Tokens per second between this process's first and last waits for the device at or past step
        ``STEADY_FROM`` (compilation and warm-up left out); None when it ran too few steps."""
        steps = sorted(s for s in self.synced_at if s >= STEADY_FROM)
        if len(steps) < 2:
            return None
        first, last = steps[0], steps[-1]
        return self.tokens_per_step * (last - first) / max(self.synced_at[last] - self.synced_at[first], 1e-9)

    def warmup_seconds(self) -> float | None:
        """What this process's steps up to ``STEADY_FROM`` took beyond the steady rate: compilation, CUDA graph
        capture and warm-up (None when the steady rate is unknown or the run resumed past that step)."""
        rate = self.steady_tokens_per_second()
        if rate is None or self.first_step_time is None or STEADY_FROM not in self.synced_at:
            return None
        steps = STEADY_FROM - self._first_step
        return self.synced_at[STEADY_FROM] - self.first_step_time - steps * self.tokens_per_step / rate

    # -- validation -----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._validation_start = time.perf_counter()
        self.check_finite()
        n = len(self.categories)
        self._sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._count = torch.zeros(n, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx) -> None:
        x, y, cats = batch
        logits = self.model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").double()
        keep = cats.flatten() != PADDING
        self._sum.index_add_(0, cats.flatten()[keep], nll[keep])
        self._count.index_add_(0, cats.flatten()[keep], torch.ones_like(nll[keep]))

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._count, reduce_op="sum")
        val_loss = float(total.sum() / count.sum())
        self.val_by_category = {c: float(total[i] / count[i]) for i, c in enumerate(self.categories) if count[i] > 0}
        tokens = self.tokens_seen()
        if not self.val_curve or self.val_curve[-1][0] != tokens:
            self.val_curve.append([tokens, val_loss])
        self.log("val_loss", val_loss, prog_bar=True, rank_zero_only=True, sync_dist=False)
        self.validation_seconds += time.perf_counter() - self._validation_start  # float() above waited for the device

    # -- resumable state ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank builds the checkpoint and rank 0 writes it: the whole tables come together on rank 0
        for name, tables in sharded_tables(self):
            checkpoint["state_dict"][name] = gather_rows(tables.weight, tables.total_rows, self.model.table_shards.sg)
        self.check_finite()  # a checkpoint past the divergence would be resumed into it
        checkpoint["engram_lab"] = {"val_curve": self.val_curve, "train_seconds": self.train_seconds,
                                    "between_seconds": self.between_seconds,
                                    "validation_seconds": self.validation_seconds,
                                    "recent_losses": self.recent_losses, "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for name, tables in sharded_tables(self):  # whole in the checkpoint, whatever layout wrote it
            checkpoint["state_dict"][name] = shard_of(checkpoint["state_dict"][name], *tables.shard)
        state = checkpoint.get("engram_lab", {})
        self.val_curve = [list(p) for p in state.get("val_curve", [])]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.between_seconds = float(state.get("between_seconds", 0.0))
        self.validation_seconds = float(state.get("validation_seconds", 0.0))
        self._recent_losses = list(state.get("recent_losses", []))
        if "rng" in state:
            torch.set_rng_state(state["rng"])


class CorpusDataModule(L.LightningDataModule):
    """Step-addressed training batches from the trainer's restored step, and the fixed validation set."""

    def __init__(self, corpus: Corpus, trial: TrialConfig):
        super().__init__()
        self.corpus, self.trial = corpus, trial

    def train_dataloader(self):
        t = self.trainer
        # rank r reads slice r of each step's batch: together the ranks read what one process would
        data = TrainBatches(self.corpus.train, self.trial.data.seq_len, self.trial.train.batch_size // t.world_size,
                            self.trial.seed, start_step=t.global_step, rank=t.global_rank, world=t.world_size)
        return torch.utils.data.DataLoader(data, batch_size=None, num_workers=0, pin_memory=self._pinned())

    def val_dataloader(self):
        t = self.trainer
        data = ValidationSet(self.corpus.validation, self.trial.data.seq_len, self.trial.train.val_tokens,
                             rank=t.global_rank, world=t.world_size)
        return torch.utils.data.DataLoader(data, batch_size=self.trial.train.batch_size, shuffle=False,
                                           pin_memory=self._pinned())

    def _pinned(self) -> bool:
        # a copy from pageable memory waits for the device to finish the queued steps; from page-locked memory it
        # is queued behind them, and the host prepares the next step meanwhile
        return self.trainer.strategy.root_device.type == "cuda"


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_steps`` optimizer steps, taken after the validation due at the same step.

    Lightning saves a step checkpoint when the step's batch ends, before that step's validation runs; a run resumed
    from it would never validate at that step, and its curve would lack the point. At a step that validates, the
    save waits for the validation to end."""

    def __init__(self, dirpath: Path, every_n_steps: int, validate_every_steps: int):
        # no version counter: the validation-step saves below write last.ckpt too, and Lightning would otherwise
        # take it for another run's file and save its own as last-v1.ckpt
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_steps, save_top_k=0, save_last=True,
                         enable_version_counter=False)
        self.every_n_steps, self.validate_every_steps = every_n_steps, validate_every_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.validate_every_steps:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.state.fn == "fit" and not trainer.sanity_checking and step and step % self.every_n_steps == 0:
            trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")


def previous_checkpoint(path: Path) -> Path:
    """Where :class:`KeepPreviousCheckpointIO` keeps the checkpoint that a save to ``path`` replaced."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


class KeepPreviousCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint whole or not at all, and keeps the one it replaces (:func:`previous_checkpoint`): a trial
    whose last checkpoint does not load still has an earlier one to resume from.

    Lightning's own writer stages the file in the system's temporary folder and moves it into place; across file
    systems (a node's /tmp, the shared work folder) that move is a copy, which a kill or a crash can cut short."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0  # spent writing, this process (copies off the device, torch.save, fsync)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        started = time.perf_counter()
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")  # a trial has one writer (its lock): one name leaves no litter
        with open(staged, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous_checkpoint(path))
        os.replace(staged, path)
        self.seconds += time.perf_counter() - started


CORRUPT_SUFFIX = ".corrupt-"


def resume_checkpoint(last: Path, leader: bool) -> tuple[Path | None, int]:
    """The checkpoint a trial resumes from and its step: ``last``, else the one it replaced, the first that loads;
    ``(None, 0)`` when neither does, and the trial starts from scratch.

    A checkpoint that exists but does not load (cut short while it was written) would fail every retry. The
    ``leader`` renames it ``<name>.corrupt-<UTC time>``, kept for a post-mortem, and says in the log which it set
    aside and where the trial starts. The other ranks only pass over it, which brings them to the same choice
    whether or not the leader has moved it yet."""
    set_aside = []
    for path in (last, previous_checkpoint(last)):
        if not path.exists():
            continue
        try:
            # loaded whole, as the resume will: mmap, which would spare the read, fails on some file systems
            step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except PermissionError:
            raise  # a checkpoint this process may not read is not a damaged one
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # a file cut short at any byte
            if leader:
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
                kept = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}")
                os.rename(path, kept)
                set_aside.append(f"{path} cannot be loaded ({type(err).__name__}: {err}); set aside as {kept}")
            continue
        if set_aside:
            log.warning("%s; resuming from %s at step %d", "; ".join(set_aside), path, step)
        return path, step
    if set_aside:
        log.warning("%s; starting from scratch", "; ".join(set_aside))
    return None, 0


def set_aside_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in ``folder`` that :func:`resume_checkpoint` ever set aside, oldest first."""
    return sorted(folder.glob(f"*{CORRUPT_SUFFIX}*"), key=lambda p: p.name.rsplit(CORRUPT_SUFFIX, 1)[1])
