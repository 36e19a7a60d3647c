"""The lm-eval model ``engram``: a thin :class:`lm_eval.api.model.LM` around a checkpoint folder.

Shaped like Meta Lingua's ``EvalHarnessLM``: lm-eval hands over text requests, this class tokenises them with the
checkpoint's own tokenizer, batches them and reads log-probabilities or greedy tokens off our model.

* ``loglikelihood``: context and continuation are tokenised the way lm-eval's Hugging Face model does it (trailing
  spaces of the context move to the continuation, the whole string is encoded and split where the encoded context
  ends); the model input is ``(context + continuation)[:-1]``, truncated from the left to the model's context
  ``max_seq_len``. Requests with the same model input (the four answers of a multiple-choice question whose
  continuations are one token each) share one forward pass.
* ``loglikelihood_rolling``: lm-eval's own disjoint rolling windows (``get_rolling_token_windows`` with one token of
  context, then ``make_disjoint_window``), each no longer than ``max_seq_len``; every token is scored exactly once.
* ``generate_until``: greedy decoding until a stop sequence, the end-of-text token or ``max_gen_toks``. The context
  is truncated from the left to ``max_seq_len - max_gen_toks`` so that the generation fits the model's context, as
  lm-eval does; where ``max_gen_toks`` is over half the context (BBH's default of 256 tokens on a 256-token model),
  the prompt keeps half and the generation stops when the context is full.

Batches are sorted by length, longest first (padding is bounded by the neighbouring lengths and an out-of-memory
error shows on the first batch). Padding goes on the right, where a causal model never looks back at it. On a GPU the
forward pass runs under bf16 autocast, so logits come out in bf16 (as from lm-eval's Hugging Face model loaded in
bf16: about 0.03 nats of rounding per token on a small model); the log-softmax is always taken in float32.

Python route (the ``lm_eval`` command line cannot find a model registered by another package)::

    import lm_eval
    from eval.lm import EngramEvalLM
    from eval.tasks import task_manager

    lm = EngramEvalLM("runs/<sweep>/<run_id>/model", batch_size=8)          # or memory="off"
    tasks = ["engram_niah_single_512", "engram_world_knowledge"]
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager(tasks, lm), limit=50)

With this module imported, ``lm_eval.simple_evaluate(model="engram", model_args="ckpt=PATH,batch_size=8", ...)``
works too. ``engram-lab eval`` (:mod:`eval.cli`) does the above and writes eval records.

Shapes: B batch, T time, V vocabulary, K continuation length.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string

from experiments.checkpoint import load_model
from experiments.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MEMORY_SETTINGS = ("on", "off")


class NoMemory(ValueError):
    """``memory="off"`` asked of a model without memory: it would score exactly as with the memory on."""


def model_folder(path: str | Path) -> Path:
    """The model folder of ``path``: the folder itself, or the ``model/`` inside a run folder."""
    path = Path(path)
    if not (path / "model.pt").exists() and (path / "model" / "model.pt").exists():
        return path / "model"
    return path


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's Hugging Face model makes them.

    Trailing whitespace of the context moves to the continuation (``"Answer: "`` + ``"A"`` is scored as ``" A"``),
    then the whole string is encoded and split where the encoded context ends, so the continuation gets the tokens
    the model would see in running text. An empty context becomes the prefix token (end-of-text), as in lm-eval.
    """
    if not context:
        continuation_ids = tokenizer.encode(continuation)
        if continuation_ids and continuation_ids[0] == prefix_id:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix_id], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the earliest occurrence of any stop sequence (lm-eval's post-processing)."""
    cut = min((text.find(s) for s in until if s and s in text), default=len(text))
    return text[:cut]


@register_model("engram")
class EngramEvalLM(LM):
    """An lm-eval model over a checkpoint folder (``runs/<sweep>/<run_id>/model``: weights, config, tokenizer).

    Args:
        ckpt: the model folder (or the run folder holding ``model/``); loaded with ``weights_only=True``.
        batch_size: sequences per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; default: the first GPU when there is one, else the CPU.
        memory: ``on``, or ``off`` to suppress every Engram output at inference (the paper's sensitivity test).
        max_gen_toks: generation budget for requests that name none.
    """

    def __init__(self, ckpt: str | Path, batch_size: int | str = 8, device: str | None = None,
                 memory: str = "on", max_gen_toks: int = 256):
        super().__init__()
        if memory not in MEMORY_SETTINGS:
            raise ValueError(f"memory must be one of {MEMORY_SETTINGS}, got {memory!r}")
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.ckpt = model_folder(ckpt)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer, self.trial = load_model(self.ckpt, self._device)
        if memory == "off" and self.model.hasher is None:
            raise NoMemory(f"{self.ckpt} has no Engram or OverEncoding table: with the memory off it would score "
                           "exactly as with it on, so there is nothing to compare")
        self.memory = memory
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> EngramEvalLM:
        """``"ckpt=PATH,batch_size=8,memory=off"``; values lm-eval passes itself (batch size, device) win."""
        args = simple_parse_args_string(arg_string)
        args.update({k: v for k, v in (additional_config or {}).items() if v is not None and k != "max_batch_size"})
        return cls(**args)

    # -- what lm-eval reads off a model ---------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self.model.config.max_seq_len

    @property
    def eot_token_id(self) -> int:
        """End-of-text: the training corpus joins documents with it, so it also stands before a text's first token."""
        return self.tokenizer.eos_id

    def get_model_info(self) -> dict:
        return {"checkpoint": str(self.ckpt), "memory": self.memory, "max_length": self.max_length}

    # -- forward passes -------------------------------------------------------------------------------------------
    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Logits [B, T, V] of right-padded ``rows`` (each at most ``max_length`` tokens): no gradients, memory on or
        off as asked, bf16 autocast on a GPU."""
        width = max(len(r) for r in rows)
        ids_BT = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids_BT[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self._device.type == "cuda":
                stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
            if self.memory == "off":
                stack.enter_context(self.model.memory_off())
            return self.model(ids_BT.to(self._device))

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per token pair."""
        inputs: dict[tuple[int, ...], list[int]] = {}  # model input -> indices of the pairs it serves
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ValueError("a loglikelihood request needs a non-empty continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's context "
                                 f"({self.max_length})")
            inputs.setdefault(tuple((context + continuation)[-(self.max_length + 1):-1]), []).append(i)
        order = sorted(inputs, key=len, reverse=True)
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            logits_BTV = self._logits([list(x) for x in batch])
            for b, model_input in enumerate(batch):
                n = len(model_input)
                for i in inputs[model_input]:
                    continuation = pairs[i][1]
                    logprobs_KV = logits_BTV[b, n - len(continuation):n].float().log_softmax(-1)
                    target_K = torch.tensor(continuation, device=logprobs_KV.device)
                    logprob = logprobs_KV.gather(-1, target_K[:, None]).sum().item()
                    greedy = bool((logprobs_KV.argmax(-1) == target_K).all())
                    out[i] = (logprob, greedy)
        return out

    # -- the three request types ----------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation, self.eot_token_id)
                 for context, continuation in (r.args for r in requests)]
        return self._score(pairs)

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """Disjoint (context, scored tokens) windows of ``text``; context + scored tokens <= max_length + 1."""
        windows = get_rolling_token_windows(token_list=self.tokenizer.encode(text), prefix_token=self.eot_token_id,
                                            max_seq_len=self.max_length, context_len=1)
        return [make_disjoint_window(w) for w in windows]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows = [self.rolling_windows(text) for (text,) in (r.args for r in requests)]
        scores = iter(self._score([w for ws in windows for w in ws]))
        return [sum(next(scores)[0] for _ in ws) for ws in windows]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}  # requests with the same generation settings run in the same batches
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            if kwargs.get("do_sample"):
                log.warning("engram: sampling was asked for; this model decodes greedily")
            until, max_gen_toks = kwargs["until"], kwargs["max_gen_toks"]
            budget = self.max_length - min(max_gen_toks, self.max_length // 2)
            contexts = {i: (self.tokenizer.encode(requests[i].args[0]) or [self.eot_token_id])[-budget:]
                        for i in members}
            order = sorted(members, key=lambda i: len(contexts[i]), reverse=True)
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for i, text in zip(batch, self.greedy([contexts[i] for i in batch], until, max_gen_toks)):
                    out[i] = text
        return out

    def greedy(self, contexts: list[list[int]], until: list[str], max_gen_toks: int) -> list[str]:
        """Greedy continuations of token ``contexts``, each cut at its first stop sequence.

        A row stops at the end-of-text token, once its decoded text holds a stop sequence, after ``max_gen_toks``
        tokens, or when it fills the model's context; the batch runs while any row is still going (finished rows
        leave the forward pass).
        """
        generated: list[list[int]] = [[] for _ in contexts]
        active = list(range(len(contexts)))
        for _ in range(max_gen_toks):
            rows = [contexts[i] + generated[i] for i in active]
            logits_BTV = self._logits(rows)
            last = torch.tensor([len(r) - 1 for r in rows], device=logits_BTV.device)
            next_ids = logits_BTV[torch.arange(len(rows), device=logits_BTV.device), last].argmax(-1).tolist()
            still = []
            for i, token in zip(active, next_ids):
                if token == self.eot_token_id:
                    continue
                generated[i].append(token)
                full = len(contexts[i]) + len(generated[i]) >= self.max_length
                text = self.tokenizer.decode(generated[i]) if until else ""  # RULER's tasks stop at end-of-text only
                stopped = any(s and s in text for s in until)
                if not full and not stopped:
                    still.append(i)
            active = still
            if not active:
                break
        return [cut_at_stop(self.tokenizer.decode(g), until) for g in generated]

