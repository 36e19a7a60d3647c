"""Run, eval and probe records: the contract between stages (DESIGN.md, "The flow of data"). Training, evaluation,
probes and analysis all import it, and it imports none of them.

One JSON object per trial (``results/<sweep>/runs/<run_id>.json``), one per (checkpoint, task)
(``results/<sweep>/evals/<run_id>/<task>.json``) and one per (checkpoint, probe kind[, other checkpoint])
(``results/<sweep>/probes/<run_id>/<kind>[__vs_<other run_id>].json``), each written atomically
(:func:`engram_lab.files.write_atomic`). Nothing downstream reads a stage's internals, only these records.

Run record fields:
    run_id        hash of the resolved trial config (:func:`run_id`)
    sweep         sweep name ("" for a lone ``engram-lab train``)
    experiment    what the trial belongs to: allocation | memory_scaling | placement | ablation | smoke | ...
    axes          the sweep axis values of this trial, e.g. {"rho": 0.8, "budget": "2e20", "seed": 1} or
                  {"method": "overencoding", "rows": 4099} or {"layers": [1]} or {"ablation": "no_gate"}
    seed          the trial seed (data order, init)
    status        completed | failed | diverged
    reason        why it failed or diverged (None when completed)
    diverged_step the optimizer step at which the loss became NaN/inf (None otherwise)
    config        the full resolved trial config
    accounting    engram.budget.Counts.as_record() plus tokens and total_flops actually trained
    metrics       train_loss, val_loss, val_loss_by_category, val_curve [[tokens, loss], ...], tokens_per_second
                  (over all steps), tokens_per_second_steady (after the first 10 steps of this process), mfu (of
                  the steady rate), startup_s (the trial's start to its first step: data, model, trainer set-up),
                  warmup_s (the first steps' time beyond the steady rate: compilation, CUDA graph capture),
                  steps_s (inside the training steps), between_steps_s (from a step's end to the next one's
                  start: validation_s and checkpoint_s, the time validating and writing step checkpoints, fall
                  there or after the last step; on a GPU the host waits for queued steps wherever it next blocks,
                  so the steps' time is steps_s plus what between_steps_s holds beyond those two), heldout_s,
                  save_s (scoring the held-out text, exporting the model), unigram_entropy (of the validation
                  tokens, nats) and anything else the trainer measured
    checkpoint    the final model folder ``<workdir>/<sweep>/<run_id>/model`` (:func:`portable_path`), or None
    wall_time_s, device, versions {python, torch, lightning, ...}, git_commit, created (ISO time, UTC)
    resumed_from  (optional: absent from records written before it existed, so not in RUN_FIELDS) how the process
                  that wrote the record started training: None for a fresh start (no checkpoint, none set aside),
                  else {checkpoint: the resume checkpoint it loaded (:func:`portable_path`), None when it started
                  from scratch; step: the optimizer step it resumed at (0 from scratch); set_aside: the trial's
                  checkpoints found unloadable at any start, kept as ``<name>.corrupt-<UTC time>``}

Eval record fields: run_id, sweep, task, task_version, num_fewshot, limit, lm_eval_version, memory ("on" | "off"),
metrics {metric: {"value": v, "stderr": s}}, checkpoint (the model folder, :func:`portable_path`), created.

Probe record fields (the mechanistic probes of PAPER.md section 6, written by :mod:`eval.probes`):
    kind          logit_lens | cka | gate | memory_off | induction
    run_id, sweep the probed checkpoint's run;  label: its name in legends ("engram (rho=0.8)", "moe (rho=1.0)")
    against, against_label   the other checkpoint's run id and label (cka), else None
    checkpoint, against_checkpoint   model folders (:func:`portable_path`)
    settings      what the probe ran with (tokens, seq_len, ...)
    created
    data          logit_lens: {layers, names, kl: [KL(final output || layer read through the head)], n_tokens}
                  cka:        {rows, cols (labels), row_names, col_names, matrix [[CKA(layer i of run_id, layer j
                               of against)]], best_match [argmax_j per i], soft_alignment [a_i, top-k weighted], k,
                               n_tokens}
                  gate:       {tokens, token_ids, channels, gates [[alpha per token] per channel], top_ngrams
                               [{ngram, ids, order, count, mean_gate, channel_means}], corpus_tokens}
                  memory_off: {rows [{name, source (validation | lm-eval), group (kind | category | task), kind
                               (static | dynamic | None), metric, on, off, retained (off / on, None when on = 0), n,
                               loss_on, loss_off (validation rows)}]}
                  induction:  {first_loss, repeat_loss, first_accuracy, repeat_accuracy (random tokens repeated
                               once: the first copy, and the repeat after its first token), uniform_loss, score
                               (first_loss - repeat_loss), n_sequences, half_length}
    Layer i is the residual stream after i blocks (0: the embedding output).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Iterable

RUN_STATUSES = ("completed", "failed", "diverged")
RUN_FIELDS = ("run_id", "sweep", "experiment", "axes", "seed", "status", "reason", "diverged_step", "config",
              "accounting", "metrics", "checkpoint", "wall_time_s", "device", "versions", "git_commit", "created")
EVAL_FIELDS = ("run_id", "sweep", "task", "task_version", "num_fewshot", "limit", "lm_eval_version", "memory",
               "metrics", "checkpoint", "created")
PROBE_FIELDS = ("kind", "run_id", "sweep", "label", "against", "against_label", "checkpoint", "against_checkpoint",
                "settings", "data", "created")
PROBE_DATA = {"logit_lens": ("layers", "kl"), "gate": ("tokens", "channels", "gates", "top_ngrams", "corpus_tokens"),
              "cka": ("rows", "cols", "matrix", "best_match", "soft_alignment", "k", "n_tokens"),
              "memory_off": ("rows",),
              "induction": ("first_loss", "repeat_loss", "first_accuracy", "repeat_accuracy", "score")}


class RecordError(ValueError):
    """A record file that cannot be read as a record; the message names the file."""


# Fields added to the data config after token caches and run ids were first recorded, with the value every earlier
# config had: at that value they are left out of both, so recorded runs keep their ids as the schema grows.
LATER_DATA_DEFAULTS = {("synthetic", "needle_queries"): 1, ("synthetic", "category_weights", "lookup"): 0.0,
                       ("heldout",): None}
# How a trial is laid out on devices, and whether its step is compiled, is not what it does (both change rounding,
# not the computation): the run id hashes every trial as one eager process runs it, so a trial resumes from its
# checkpoints, and is found done, on any layout and either way. The record keeps the config as it ran.
LAYOUT_FIELDS = ("devices", "num_nodes", "strategy", "shard_tables", "compile")
AS_ONE_EAGER_PROCESS = {"devices": 1, "num_nodes": 1, "strategy": "auto", "compile": False}


def data_identity(data: dict) -> dict:
    """The data config as it enters the run id and the token cache key (a copy; ``LATER_DATA_DEFAULTS`` left out)."""
    tree = copy.deepcopy(data)
    for (*parents, leaf), value in LATER_DATA_DEFAULTS.items():
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == value:
            del node[leaf]
    return tree


def run_id(resolved_config: dict) -> str:
    """The run id of a resolved trial config (as a record holds it): 12 hex digits of a hash of what the trial does.

    Its sweep axes are labels and its device layout is how it runs: neither is part of it. A record's ``run_id``
    must equal ``run_id(record["config"])``; :func:`read_run_record` refuses one that does not."""
    config = {k: v for k, v in resolved_config.items() if k != "axes"}
    if "data" in config:
        config["data"] = data_identity(config["data"])
    if "train" in config:
        train = {k: v for k, v in config["train"].items() if k not in LAYOUT_FIELDS}
        config["train"] = {**train, **AS_ONE_EAGER_PROCESS}
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_record(path: str | Path, fields: tuple[str, ...], kind: str) -> dict:
    data = read_json(path)
    missing = [k for k in fields if k not in data]
    if missing:
        raise RecordError(f"{path}: {kind} record lacks {', '.join(missing)}")
    return data


def read_run_record(path: str | Path) -> dict:
    """A validated run record; :class:`RecordError` names the file and what is wrong."""
    data = _read_record(path, RUN_FIELDS, "run")
    if data["status"] not in RUN_STATUSES:
        raise RecordError(f"{path}: status {data['status']!r} is not one of {RUN_STATUSES}")
    val_loss = (data.get("metrics") or {}).get("val_loss")
    if data["status"] == "completed" and not (isinstance(val_loss, (int, float)) and math.isfinite(val_loss)):
        raise RecordError(f"{path}: a completed run record needs a finite metrics.val_loss, got {val_loss!r}")
    if not isinstance(data["config"], dict):
        raise RecordError(f"{path}: config must be an object, got {type(data['config']).__name__}")
    if run_id(data["config"]) != data["run_id"]:
        raise RecordError(f"{path}: its config hashes to run id {run_id(data['config'])}, not to its run_id "
                          f"{data['run_id']!r}: the config was changed after the run was recorded")
    return data


def read_eval_record(path: str | Path) -> dict:
    return _read_record(path, EVAL_FIELDS, "eval")


def read_probe_record(path: str | Path) -> dict:
    """A validated probe record: every field, a known kind, and the data its figures read."""
    data = _read_record(path, PROBE_FIELDS, "probe")
    if data["kind"] not in PROBE_DATA:
        raise RecordError(f"{path}: probe kind {data['kind']!r} is not one of {tuple(PROBE_DATA)}")
    lacking = [k for k in PROBE_DATA[data["kind"]] if k not in (data["data"] or {})]
    if lacking:
        raise RecordError(f"{path}: {data['kind']} probe data lacks {', '.join(lacking)}")
    return data


def portable_path(path: str | Path) -> str:
    """``path`` relative to the working directory where it lies inside it (so a record names the same checkpoint on
    any machine that runs from a checkout), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def run_path(results: str | Path, sweep: str, rid: str) -> Path:
    return Path(results) / (sweep or "_runs") / "runs" / f"{rid}.json"


def eval_path(results: str | Path, sweep: str, rid: str, task: str, memory: str = "on") -> Path:
    suffix = "" if memory == "on" else "__memory_off"
    return Path(results) / (sweep or "_runs") / "evals" / rid / f"{task}{suffix}.json"


def probe_path(results: str | Path, sweep: str, rid: str, kind: str, against: str | None = None) -> Path:
    suffix = f"__vs_{against}" if against else ""
    return Path(results) / (sweep or "_runs") / "probes" / rid / f"{kind}{suffix}.json"


def analysis_dir(results: str | Path, sweeps: Iterable[str]) -> Path:
    """``results/<sweep>`` for one sweep; ``results/_combined/<a>+<b>...`` when several are pooled."""
    names = sorted(sweeps)
    if len(names) == 1:
        return Path(results) / names[0]
    return Path(results) / "_combined" / "+".join(names)
