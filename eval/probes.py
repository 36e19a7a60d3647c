"""Mechanistic probes (PAPER.md section 6) on checkpoints, each written as a probe record (engram_lab/records.py).

    logit_lens(model, inputs)              KL(final output || a layer read through the final norm and head), per layer
    cka(model_a, model_b, inputs)          linear CKA (unbiased HSIC) between every layer of A and every layer of B
    layer_matching(matrix)                 for each layer of A, the best-matching layer of B and the soft index
    gate_values(model, ids)                the Engram gate alpha per token and channel (Engram layer x branch)
    top_gated_ngrams(model, tok, inputs)   the N-grams with the highest mean gate over a corpus
    memory_off(model, tokens)              next-token accuracy and loss per synthetic category, memory on vs off
    memory_off_tasks(ckpt, tasks)          lm-eval tasks through the eval stage (eval.run.evaluate), memory on vs off
    induction(model, tokenizer, seq_len)   in-context copying: loss on the repeat of a random token sequence
    run_probes(ckpt, against=...)          the probes of one checkpoint (and its twin) -> probe records

Layer i is the residual stream after i blocks, as ``EngramLM.forward(output_hidden=True)`` returns it: 0 is the
embedding output and ``n_layers`` the last block's output, which the final norm and head turn into the prediction.
Every probe runs without autocast, in float32 (the HSIC sums in float64): KL and HSIC take differences of nearly
equal numbers.

Differences from the paper: CKA compares every token of the validation sequences (the paper takes the last token of
each Few-NERD entity), and the memory-off test scores the model's own validation categories (static: world facts
and sayings; dynamic: in-context facts, arithmetic, variables, multi-hop, needles) besides any lm-eval task.

Shapes: N sequences, B batch, T time, D model width, C gate channels, L layers (the embedding and each block).
"""

from __future__ import annotations

import datetime
import itertools
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engram.memory import Engram
from engram.model import EngramLM
from experiments.config import TrialConfig
from experiments.data import ValidationSet, materialise
from engram_lab.records import portable_path, probe_path
from engram_lab.files import write_atomic
from experiments.synthetic import KIND, SyntheticCorpus
from experiments.tokenizer import Tokenizer

PROBES = ("logit_lens", "cka", "gate", "memory_off", "induction")


# -- the validation tokens every corpus-wide probe reads -------------------------------------------------------------


@dataclass
class ProbeTokens:
    """Validation sequences: inputs and next-token targets [N, T], and each target's category (index into names)."""

    inputs_NT: torch.Tensor
    targets_NT: torch.Tensor
    categories_NT: torch.Tensor
    names: list[str]


def validation_tokens(trial: TrialConfig, tokenizer: Tokenizer, n_tokens: int, seq_len: int) -> ProbeTokens:
    """The first ``n_tokens`` of the trial's validation split, cut into sequences exactly as its trainer scored them.

    The split is rebuilt from the data config with the checkpoint's own tokenizer by the function the trainer uses
    (``experiments.data.materialise``), not read from a corpus cache, so a probe runs on any machine that can read
    the data and never materialises a training split.
    """
    split = materialise(trial.data, tokenizer, "validation", n_tokens)
    val = ValidationSet(split, seq_len, n_tokens)
    inputs, targets, categories = (torch.stack(parts) for parts in zip(*(val[i] for i in range(len(val)))))
    return ProbeTokens(inputs, targets, categories, list(split.names))


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _device(model: EngramLM) -> torch.device:
    return model.embed.weight.device


def layer_names(model: EngramLM) -> list[str]:
    return ["embedding"] + [f"block {i}" for i in range(model.config.n_layers)]


# -- LogitLens ---------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def logit_lens(model: EngramLM, inputs_NT: torch.Tensor, batch_size: int = 8) -> dict:
    """Per layer, the mean over tokens of KL(p_final || p_layer), p_layer = softmax(head(final_norm(h_layer))).

    p_final is the model's own output; the last layer read the same way is that output, so its KL is exactly 0.
    """
    total_L, count = None, 0
    for rows in _batches(len(inputs_NT), batch_size):
        x_BT = inputs_NT[rows].to(_device(model))
        logits_BTV, hidden = model(x_BT, output_hidden=True)
        final_BTV = F.log_softmax(logits_BTV.float(), -1)
        kl_L = torch.stack([F.kl_div(F.log_softmax(model.logits(h_BTD).float(), -1), final_BTV, log_target=True,
                                     reduction="sum") for h_BTD in hidden])
        total_L = kl_L if total_L is None else total_L + kl_L
        count += x_BT.numel()
    kl = (total_L / count).tolist()
    return {"layers": list(range(len(kl))), "names": layer_names(model), "kl": kl, "n_tokens": count}


# -- CKA -------------------------------------------------------------------------------------------------------------


def _grams(states: list[torch.Tensor]) -> torch.Tensor:
    """Linear-kernel Gram matrices K = X X^T of each layer's token features [L, n, n], float64, diagonal zeroed (the
    unbiased estimator never uses it)."""
    x_LnD = torch.stack([s.reshape(-1, s.shape[-1]) for s in states]).double()
    g_Lnn = x_LnD @ x_LnD.transpose(1, 2)
    g_Lnn.diagonal(dim1=1, dim2=2).zero_()
    return g_Lnn


def unbiased_hsic(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """HSIC_1 (Song et al. 2012) of every layer pair from zero-diagonal Grams [La, n, n] and [Lb, n, n] -> [La, Lb]:

        (tr(K L) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'K L 1) / (n (n-3))
    """
    n = grams_a.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 tokens per minibatch, got {n}")
    trace = grams_a.flatten(1) @ grams_b.flatten(1).T  # tr(K L) = sum(K * L) for symmetric K, L
    rows_a, rows_b = grams_a.sum(-1), grams_b.sum(-1)  # K 1
    sums = torch.outer(rows_a.sum(-1), rows_b.sum(-1))  # 1'K1 1'L1
    return (trace + sums / ((n - 1) * (n - 2)) - 2 / (n - 2) * (rows_a @ rows_b.T)) / (n * (n - 3))


def self_hsic(grams: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of each layer with itself [L]: the diagonal of ``unbiased_hsic(grams, grams)``, without the L^2 pairs."""
    n = grams.shape[-1]
    rows = grams.sum(-1)
    return (grams.square().sum((1, 2)) + rows.sum(-1) ** 2 / ((n - 1) * (n - 2))
            - 2 / (n - 2) * rows.square().sum(-1)) / (n * (n - 3))


@torch.no_grad()
def cka_states(pairs: Iterable[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> np.ndarray:
    """Linear CKA [La, Lb] from minibatches of (layers of A, layers of B) on the same tokens.

    Minibatch CKA (Nguyen et al. 2021, as Davari et al. 2023 use it): the unbiased HSIC is summed over minibatches
    before the ratio, CKA = sum HSIC(A, B) / sqrt(sum HSIC(A, A) sum HSIC(B, B)), so it does not depend on how the
    tokens were batched beyond the estimator's own noise.
    """
    cross = self_a = self_b = 0.0
    for states_a, states_b in pairs:
        grams_a, grams_b = _grams(states_a), _grams(states_b)
        cross = cross + unbiased_hsic(grams_a, grams_b)
        self_a = self_a + self_hsic(grams_a)
        self_b = self_b + self_hsic(grams_b)
    return (cross / torch.outer(self_a, self_b).sqrt()).cpu().numpy()


@torch.inference_mode()
def cka(model_a: EngramLM, model_b: EngramLM, inputs_NT: torch.Tensor, batch_size: int = 4) -> np.ndarray:
    """Linear CKA between every layer of ``model_a`` (rows) and every layer of ``model_b`` (columns) on the same
    tokens; each minibatch of ``batch_size`` sequences gives one unbiased HSIC estimate (batch_size * T tokens)."""
    def pairs():
        for rows in _batches(len(inputs_NT), batch_size):
            _, states_a = model_a(inputs_NT[rows].to(_device(model_a)), output_hidden=True)
            _, states_b = model_b(inputs_NT[rows].to(_device(model_b)), output_hidden=True)
            yield states_a, [s.to(states_a[0].device) for s in states_b]

    return cka_states(pairs())


def soft_alignment_k(n_layers: int) -> int:
    """The paper's k = 5 as a share of depth (its models have about 30 layers), at least 2: on a model of a few
    layers, k = 5 would average most of the depth and flatten the curve towards the middle."""
    return max(2, round(n_layers / 6))


def layer_matching(matrix: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """For each layer j of A (each row): the best-matching layer of B, and the paper's soft alignment index
    a_j = sum_{i in top-k of row j} S_ji * i / sum S_ji (PAPER.md section 6), with negative CKA (possible under the
    unbiased estimator) weighted 0."""
    m = np.asarray(matrix, float)
    best = m.argmax(1)
    top = np.argsort(m, axis=1)[:, -min(k, m.shape[1]):]
    weights = np.clip(np.take_along_axis(m, top, 1), 0, None)
    total = weights.sum(1)
    soft = np.where(total > 0, (weights * top).sum(1) / np.where(total > 0, total, 1), best)
    return best.tolist(), soft.tolist()


# -- gates -------------------------------------------------------------------------------------------------------------


def gated_modules(model: EngramLM) -> list[tuple[int, Engram]]:
    """(block index, Engram module) of every Engram layer that has a gate (none for MoE or dense models, the
    bigram_hash and OverEncoding baselines, or ``gate: none``)."""
    return [(layer, m) for layer, m in zip(model.engram_layers, model.engram_modules()) if m.key is not None]


def gate_channels(model: EngramLM) -> list[str]:
    """One name per gate channel, in the order of :func:`gate_values`: ``layer 1`` or ``layer 1 branch 0``."""
    return [f"layer {layer}" if m.branches == 1 else f"layer {layer} branch {b}"
            for layer, m in gated_modules(model) for b in range(m.branches)]


@contextmanager
def _recording_gates(modules):
    """Let each Engram module keep its last gate values (``Engram.record_gates``: a copy, the numerics unchanged)."""
    for m in modules:
        m.record_gates = True
    try:
        yield
    finally:
        for m in modules:
            m.record_gates, m.last_gates = False, None


@torch.inference_mode()
def gate_values(model: EngramLM, ids_BT: torch.Tensor) -> torch.Tensor:
    """The gate alpha in (0, 1) of every token and channel (Engram layer x hyper-connection branch): [B, T, C]."""
    modules = [m for _, m in gated_modules(model)]
    if not modules:
        raise ValueError("the model has no gated Engram module")
    if not model.memory_enabled:
        raise ValueError("the memory is switched off: no gate runs")
    with _recording_gates(modules):
        model(ids_BT.to(_device(model)))
        return torch.cat([m.last_gates.float() for m in modules], -1)


def gate_text(model: EngramLM, tokenizer: Tokenizer, ids: list[int]) -> dict:
    """The gate heatmap's data for one text: its tokens (each decoded alone), channel names and gates [C][T]."""
    ids = list(ids)[: model.config.max_seq_len]
    gates_TC = gate_values(model, torch.tensor([ids]))[0]
    return {"tokens": [tokenizer.decode([i]) for i in ids], "token_ids": ids, "channels": gate_channels(model),
            "gates": gates_TC.T.tolist()}


def default_gate_ids(trial: TrialConfig, tokenizer: Tokenizer, tokens: ProbeTokens, n: int) -> list[int]:
    """A text for the gate heatmap when none is given. The paper's figure shows text full of named entities and fixed
    phrases, so for the synthetic corpus it is the first static (world-facts, sayings) validation document; for other
    corpora the start of the first validation sequence."""
    if trial.data.source == "synthetic" and trial.data.synthetic.static_fraction > 0:
        # static_fraction > 0 makes a static document likely within a few draws; the bound only guards the odd case
        documents = itertools.islice(SyntheticCorpus(trial.data.synthetic).documents("validation"), 1000)
        for text, category in documents:
            if KIND[category] == "static":
                return tokenizer.encode(text)[:n]
    return tokens.inputs_NT[0, :n].tolist()


def top_gated_ngrams(model: EngramLM, tokenizer: Tokenizer, inputs_NT: torch.Tensor, batch_size: int = 8, top: int = 20,
                     min_count: int = 3) -> list[dict]:
    """The ``top`` N-grams (of the model's Engram orders) with the highest mean gate at their last token, averaged
    over channels, among those seen at least ``min_count`` times in ``inputs_NT``. N-grams across a document
    boundary (holding the end-of-text token) are left out."""
    orders = model.config.engram.orders
    stats: dict[tuple[int, ...], list] = {}  # N-gram ids -> [count, sum of gates per channel]
    for rows in _batches(len(inputs_NT), batch_size):
        gates_BTC = gate_values(model, inputs_NT[rows]).double().cpu().numpy()
        ids_BT = inputs_NT[rows].numpy()
        for n in orders:
            windows = np.lib.stride_tricks.sliding_window_view(ids_BT, n, axis=1).reshape(-1, n)
            ends = gates_BTC[:, n - 1:].reshape(len(windows), -1)  # the gate where the N-gram completes
            for key, gates_C in zip(map(tuple, windows.tolist()), ends):
                if tokenizer.eos_id in key:
                    continue
                entry = stats.setdefault(key, [0, 0.0])
                entry[0] += 1
                entry[1] = entry[1] + gates_C
    frequent = [(key, count, sums / count) for key, (count, sums) in stats.items() if count >= min_count]
    frequent.sort(key=lambda item: (-item[2].mean(), -item[1], item[0]))
    return [{"ngram": tokenizer.decode(list(key)), "ids": list(key), "order": len(key), "count": count,
             "mean_gate": float(means.mean()), "channel_means": means.tolist()}
            for key, count, means in frequent[:top]]


# -- memory-off sensitivity ------------------------------------------------------------------------------------------


def _retained_row(name: str, source: str, group: str, kind: str | None, metric: str, on: float, off: float,
                  n: int | None, loss_on: float | None = None, loss_off: float | None = None) -> dict:
    return {"name": name, "source": source, "group": group, "kind": kind, "metric": metric, "on": on, "off": off,
            "retained": off / on if on > 0 else None, "n": n, "loss_on": loss_on, "loss_off": loss_off}


@torch.inference_mode()
def _token_scores(model: EngramLM, tokens: ProbeTokens, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target token: cross-entropy (nats) and whether the argmax prediction is right, flattened [N * T]."""
    losses, correct = [], []
    for rows in _batches(len(tokens.inputs_NT), batch_size):
        logits_BTV = model(tokens.inputs_NT[rows].to(_device(model))).float()
        y_BT = tokens.targets_NT[rows].to(logits_BTV.device)
        losses.append(F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten(), reduction="none").cpu())
        correct.append((logits_BTV.argmax(-1) == y_BT).flatten().cpu())
    return torch.cat(losses).double(), torch.cat(correct).double()


def memory_off(model: EngramLM, tokens: ProbeTokens, batch_size: int = 8) -> list[dict]:
    """Next-token accuracy and loss with the Engram output suppressed at inference against the model as trained,
    per half of the synthetic corpus (static / dynamic) and per category; ``retained`` = accuracy off / on."""
    if model.hasher is None:
        raise ValueError("the model has no memory to switch off")
    loss_on, right_on = _token_scores(model, tokens, batch_size)
    with model.memory_off():
        loss_off, right_off = _token_scores(model, tokens, batch_size)
    categories = tokens.categories_NT.flatten()
    groups = [(half, "kind", half, [i for i, c in enumerate(tokens.names) if KIND.get(c) == half])
              for half in ("static", "dynamic")]
    groups += [(c, "category", KIND.get(c), [i]) for i, c in enumerate(tokens.names)]
    rows = []
    for name, group, kind, ids in groups:
        mask = torch.isin(categories, torch.tensor(ids, dtype=categories.dtype))
        n = int(mask.sum())
        if n == 0:
            continue
        rows.append(_retained_row(name, "validation", group, kind, "next-token accuracy", right_on[mask].mean().item(),
                                  right_off[mask].mean().item(), n, loss_on[mask].mean().item(),
                                  loss_off[mask].mean().item()))
    return rows


def retained_rows(on_records: list[dict], off_records: list[dict]) -> list[dict]:
    """One row per (task, metric) evaluated both with the memory on and off, from the eval stage's records."""
    off = {(r["task"], metric): m["value"] for r in off_records for metric, m in r["metrics"].items()}
    return [_retained_row(r["task"], "lm-eval", "task", None, metric, m["value"], off[r["task"], metric],
                          r.get("n_samples"))
            for r in on_records for metric, m in sorted(r["metrics"].items()) if (r["task"], metric) in off]


def memory_off_tasks(ckpt: str | Path, tasks: list[str], *, results: str | Path | None, **evaluate_options) -> list:
    """lm-eval ``tasks`` on ``ckpt`` with the memory on and off through the eval stage, which also writes their eval
    records under ``results``; the retained fraction of every metric. ``evaluate_options``: :func:`eval.run.evaluate`'s
    (limit, num_fewshot, batch_size, device, options, gen_kwargs)."""
    from eval.run import evaluate

    on, _ = evaluate(ckpt, tasks, memory="on", results=results, **evaluate_options)
    off, _ = evaluate(ckpt, tasks, memory="off", results=results, **evaluate_options)
    return retained_rows(on, off)


# -- induction (in-context copying) -----------------------------------------------------------------------------------


@torch.inference_mode()
def induction(model: EngramLM, tokenizer: Tokenizer, seq_len: int, n: int = 64, batch_size: int = 8,
              seed: int = 0) -> dict:
    """Next-token loss and accuracy on ``n`` sequences of random tokens, each repeated once (Olsson et al., 2022).

    No statistic of the corpus predicts a random token, so the first copy scores near the uniform loss; a model that
    copies arbitrary tokens from its context (induction heads) predicts the repeat almost exactly. A small model may
    copy only the kinds of tokens its corpus made it copy and still read 0 here: the models of eval_synthetic that
    find 90% of the corpus's needles do (their copying shows on the ``lookup`` rows of :func:`memory_off`).
    ``score``: first-copy minus repeat loss, in nats (0: no copying of arbitrary tokens)."""
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
    pool = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in specials])
    half = seq_len // 2
    picks = torch.randint(len(pool), (n, half), generator=torch.Generator().manual_seed(seed))
    inputs_NT = pool[picks].repeat(1, 2)
    loss_NT, hit_NT = [], []
    for rows in _batches(n, batch_size):
        x_BT = inputs_NT[rows].to(_device(model))
        logits_BTV = model(x_BT)[:, :-1].float()
        loss_NT.append(F.cross_entropy(logits_BTV.transpose(1, 2), x_BT[:, 1:], reduction="none").cpu())
        hit_NT.append((logits_BTV.argmax(-1) == x_BT[:, 1:]).float().cpu())
    loss, hit = torch.cat(loss_NT), torch.cat(hit_NT)
    # loss j scores token j + 1: the first copy's tokens 1..half-1, and the repeat's after its first (which follows
    # a token that never appeared before it)
    first, repeat = slice(0, half - 1), slice(half, None)
    data = {"first_loss": loss[:, first].mean().item(), "repeat_loss": loss[:, repeat].mean().item(),
            "first_accuracy": hit[:, first].mean().item(), "repeat_accuracy": hit[:, repeat].mean().item(),
            "uniform_loss": float(np.log(len(pool))), "n_sequences": n, "half_length": half}
    return {**data, "score": data["first_loss"] - data["repeat_loss"]}


# -- probe records -----------------------------------------------------------------------------------------------------


@dataclass
class ProbeSettings:
    """What the probes run with; recorded in every probe record's ``settings``.

    Attributes:
        tokens: validation tokens (the prefix of the checkpoint's validation split) for the corpus-wide probes.
        seq_len: tokens per sequence; ``None``: the trial's ``data.seq_len``. Capped by every model's context.
        batch_size: sequences per forward pass; CKA estimates one HSIC per batch (batch_size * seq_len tokens).
        cka_k: layers averaged by the soft alignment index; ``None``: :func:`soft_alignment_k` of the depth.
        gate_tokens: tokens of the gate heatmap's text.
        top_ngrams, min_count: how many N-grams to list by mean gate, and how often each must occur to be listed.
        tasks: lm-eval tasks also run with the memory on and off (through the eval stage); none by default.
        task_limit: documents per lm-eval task (``None``: all).
    """

    tokens: int = 16384
    seq_len: int | None = None
    batch_size: int = 8
    cka_k: int | None = None
    gate_tokens: int = 48
    top_ngrams: int = 20
    min_count: int = 3
    tasks: list[str] = field(default_factory=list)
    task_limit: float | None = None


@dataclass
class Subject:
    """A checkpoint under probe: its model, tokenizer and trial, and the run it came from."""

    folder: Path
    model: EngramLM
    tokenizer: Tokenizer
    trial: TrialConfig
    run_id: str
    label: str

    @property
    def sweep(self) -> str:
        return self.trial.sweep


def model_label(trial: TrialConfig) -> str:
    """A model's name in legends: its kind (the Engram variant, or moe / dense) and its sweep axes but the seed."""
    m = trial.model
    kind = m.engram.variant if m.engram is not None else ("moe" if m.moe is not None else "dense")
    axes = ", ".join(f"{k}={v}" for k, v in sorted(trial.axes.items()) if k != "seed")
    return f"{kind} ({axes})" if axes else kind


def load_subject(ckpt: str | Path, device: str | None = None, label: str | None = None) -> Subject:
    """Load a checkpoint the way the eval stage does (run folder or model folder; the same run id)."""
    from eval.lm import EngramEvalLM
    from eval.run import checkpoint_run_id

    lm = EngramEvalLM(ckpt, device=device)
    return Subject(lm.ckpt, lm.model, lm.tokenizer, lm.trial, checkpoint_run_id(lm), label or model_label(lm.trial))


@dataclass
class ProbeRun:
    records: list[dict]  # in the order written
    paths: list[Path]
    skipped: list[str]  # "<probe> on <label>: why"


def run_probes(ckpt: str | Path, *, against: str | Path | None = None, probes: Iterable[str] = PROBES,
               text: str | None = None, results: str | Path = "results", device: str | None = None,
               settings: ProbeSettings | None = None, label: str | None = None, against_label: str | None = None,
               task_options=None) -> ProbeRun:
    """Run ``probes`` on the checkpoint ``ckpt`` and, with ``against``, on that one too, plus CKA between the two
    (records under ``ckpt``'s run); write one probe record per (checkpoint, probe kind[, against]).

    A probe that does not apply to a model (gates of a model without a gated Engram, memory-off of a model without
    memory, CKA without ``against``) is skipped with the reason in ``ProbeRun.skipped``. ``text``: the gate
    heatmap's text (default: :func:`default_gate_ids`). ``task_options``: :class:`eval.tasks.TaskOptions` for
    ``settings.tasks``.
    """
    settings = settings or ProbeSettings()
    probes = list(probes)
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise ValueError(f"unknown probes {unknown}; choose from {PROBES}")
    subjects = [load_subject(ckpt, device, label)]
    if against is not None:
        subjects.append(load_subject(against, device, against_label))
    seq_len = min([settings.seq_len or subjects[0].trial.data.seq_len] + [s.model.config.max_seq_len for s in subjects])
    run = ProbeRun([], [], [])

    def write(kind: str, subject: Subject, data: dict, other: Subject | None = None, **extra) -> None:
        against_fields = (other.run_id, other.label, portable_path(other.folder)) if other else (None, None, None)
        rec = {"kind": kind, "run_id": subject.run_id, "sweep": subject.sweep, "label": subject.label,
               **dict(zip(("against", "against_label", "against_checkpoint"), against_fields)),
               "checkpoint": portable_path(subject.folder),
               "settings": {**asdict(settings), "seq_len": seq_len, "device": str(_device(subject.model)), **extra},
               "data": data, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        path = probe_path(results, subject.sweep, subject.run_id, kind, against_fields[0])
        run.paths.append(write_atomic(path, rec))
        run.records.append(rec)

    tokens, splits = {}, {}  # a twin on the same data and tokenizer reads the split built for the first model
    for s in subjects:
        data_key = (json.dumps(asdict(s.trial.data), sort_keys=True, default=str), s.tokenizer.fingerprint())
        if data_key not in splits:
            splits[data_key] = validation_tokens(s.trial, s.tokenizer, settings.tokens, seq_len)
        tokens[s.run_id] = splits[data_key]
        inputs_NT = tokens[s.run_id].inputs_NT
        if "logit_lens" in probes:
            write("logit_lens", s, logit_lens(s.model, inputs_NT, settings.batch_size))
        if "gate" in probes:
            if not gated_modules(s.model):
                run.skipped.append(f"gate on {s.label}: no gated Engram module")
            else:
                ids = s.tokenizer.encode(text)[: settings.gate_tokens] if text else default_gate_ids(
                    s.trial, s.tokenizer, tokens[s.run_id], settings.gate_tokens)
                data = gate_text(s.model, s.tokenizer, ids)
                data["top_ngrams"] = top_gated_ngrams(s.model, s.tokenizer, inputs_NT, settings.batch_size,
                                                      settings.top_ngrams, settings.min_count)
                data["corpus_tokens"] = inputs_NT.numel()
                write("gate", s, data, text=text)
        if "memory_off" in probes:
            if s.model.hasher is None:
                run.skipped.append(f"memory_off on {s.label}: no memory")
            else:
                rows = memory_off(s.model, tokens[s.run_id], settings.batch_size)
                if settings.tasks:
                    rows += memory_off_tasks(s.folder, settings.tasks, results=results, limit=settings.task_limit,
                                             batch_size=settings.batch_size, device=str(_device(s.model)),
                                             options=task_options)
                write("memory_off", s, {"rows": rows})
        if "induction" in probes:
            write("induction", s, induction(s.model, s.tokenizer, seq_len, batch_size=settings.batch_size))
    if "cka" in probes:
        if len(subjects) < 2:
            run.skipped.append("cka: needs a second checkpoint (against)")
        else:
            a, b = subjects
            if a.tokenizer.fingerprint() != b.tokenizer.fingerprint():
                raise ValueError(f"CKA compares the two models on the same tokens, but {a.folder} and {b.folder} "
                                 "have different tokenizers")
            inputs_NT = tokens[a.run_id].inputs_NT
            matrix = cka(a.model, b.model, inputs_NT, settings.batch_size)
            k = settings.cka_k or soft_alignment_k(matrix.shape[1])
            best, soft = layer_matching(matrix, k)
            write("cka", a, {"rows": a.label, "cols": b.label, "row_names": layer_names(a.model),
                             "col_names": layer_names(b.model), "matrix": matrix.tolist(), "best_match": best,
                             "soft_alignment": soft, "k": k, "n_tokens": inputs_NT.numel()}, b)
    return run

