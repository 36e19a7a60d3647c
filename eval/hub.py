"""Hub tasks: what lm-eval's built-in tasks need from this project, and a clear message where the hub is out of reach.

lm-eval's ``mmlu*`` and ``bbh*`` load their data from the Hugging Face hub; its RULER tasks (``niah_*``, ``ruler_*``)
generate data but need ``transformers`` (and ``wonderwords``), a tokenizer saved in Hugging Face format (this
module exports the checkpoint's: :func:`hf_tokenizer`, :func:`export_tokenizer`, ``engram-lab export-tokenizer``)
and, for the essay haystacks, a download.

Before hub tasks run, :func:`hub_access` asks the hub once, with a short timeout. Where it does not answer, the
Hugging Face libraries run in offline mode for the evaluation: a dataset already in the local Hugging Face cache
loads, anything else fails at once instead of after the clients' rounds of retries (over a minute per dataset).
:func:`explain` then turns the failure into one line per task: what it needed and the offline pack (or local copy)
that replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from experiments.tokenizer import Tokenizer

log = logging.getLogger(__name__)

HUB_PACKAGES = ("transformers", "wonderwords")  # lm-eval's RULER tasks import these
NETWORK_MODULES = ("huggingface_hub", "requests", "urllib3", "httpx")  # their errors mean the hub was not reached
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 5.0
# (pattern of a hub task name, what replaces it offline), first match wins
REPLACEMENTS = (
    (r"^mmlu", "--mmlu-path DIR (a local copy of MMLU's published CSV files, same task name and definition), or "
               "engram_world_knowledge (MMLU-format questions about the synthetic world)"),
    (r"^bbh", "engram_bbh_fewshot / engram_bbh_zeroshot (BBH's published task files, ../shared/data/bbh or "
              "--bbh-path DIR), or the same task name with --bbh-path DIR"),
    (r"^niah_single", "engram_niah_single_<length>"),
    (r"^niah_multikey", "engram_niah_multikey_<length>"),
    (r"^niah_multivalue", "engram_niah_multivalue_<length>"),
    (r"^niah_multiquery", "engram_niah_multiquery_<length>"),
    (r"^ruler_vt$", "engram_vt_<length>"),
    (r"^ruler$", "engram_ruler_<length> (NIAH single, multi-key, multi-value, multi-query and variable tracking)"),
)


class HubUnavailable(RuntimeError):
    """A hub task could not run here; the message says which, why, and what replaces it offline."""


def replacement(task: str) -> str:
    for pattern, text in REPLACEMENTS:
        if re.search(pattern, task):
            return text
    return "no offline pack of this project replaces it"


# -- the tokenizer in Hugging Face format -----------------------------------------------------------------------------
def hf_tokenizer(tokenizer: Tokenizer, max_length: int) -> Path:
    """The checkpoint's tokenizer in Hugging Face format, generated once per (tokenizer, context) beside the task
    folders: what lm-eval's RULER tasks take as their ``tokenizer`` metadata."""
    from eval.tasks.common import build_once

    return build_once("hf-tokenizer", {"tokenizer": tokenizer.fingerprint(), "max_length": max_length},
                      lambda out, final: tokenizer.save_hf(out, model_max_length=max_length))


def export_tokenizer(ckpt: str | Path, out: str | Path) -> Path:
    """Export the tokenizer of the model folder ``ckpt`` in Hugging Face format to ``out`` (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``), for ``TaskManager(metadata={"tokenizer": out})``.

    Writing needs only ``tokenizers``. Where ``transformers`` is installed, the export is loaded back with
    ``AutoTokenizer`` and must encode a probe text to the same ids; where it is not, :class:`HubUnavailable` says
    so after the export is written (it can be used on a machine that has it).
    """
    from eval.lm import model_folder
    from experiments.checkpoint import load_trial_config

    folder = model_folder(ckpt)
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"{folder} is not a model folder (no tokenizer.json); pass runs/<sweep>/<run_id>/model")
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    out = tokenizer.save_hf(out, model_max_length=load_trial_config(folder).model.max_seq_len)
    try:
        from transformers import AutoTokenizer
    except ModuleNotFoundError:
        raise HubUnavailable(f"exported to {out}, but the Python package transformers, which lm-eval's RULER tasks "
                             "load it with, is not installed here (pip install 'engram-lab[hub]')") from None
    probe = "The capital of Dravon is Port Tessa. VAR ABCDE = 12345\n  1234567"
    loaded = AutoTokenizer.from_pretrained(str(out)).encode(probe, add_special_tokens=False)
    if loaded != tokenizer.encode(probe):
        raise RuntimeError(f"{out}: transformers encodes {probe!r} as {loaded}, the checkpoint's tokenizer as "
                           f"{tokenizer.encode(probe)}")
    return out


# -- reaching the hub -------------------------------------------------------------------------------------------------
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``) answers at all, through the proxies the environment names."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # an HTTP status, whatever it is, came from the hub
    except (OSError, ValueError):  # URLError, timeouts and refused connections are OSErrors
        return False
    return True


def offline_requested() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


@contextlib.contextmanager
def offline_mode():
    """The Hugging Face libraries in offline mode until the block ends, in this process and its children.

    ``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` once, at import, into module constants they consult
    on every call; those constants are set here (and restored after), the environment variables for subprocesses.
    """
    import datasets.config
    import huggingface_hub.constants

    flags = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
             (datasets.config, "HF_DATASETS_OFFLINE")]  # the last two: newer and older names in datasets
    saved = [getattr(module, name, None) for module, name in flags]
    saved_env = {v: os.environ.get(v) for v in OFFLINE_VARIABLES}
    os.environ.update({v: "1" for v in OFFLINE_VARIABLES})
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, saved):
            setattr(module, name, value)
        for variable, value in saved_env.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def hub_access(hub_tasks: list[str]):
    """The context to run ``hub_tasks`` in: as they are where the hub answers (or offline mode was asked for), in
    :func:`offline_mode` where it does not."""
    if not hub_tasks or offline_requested() or hub_reachable():
        return contextlib.nullcontext()
    log.warning("the Hugging Face hub does not answer: %s run from the local Hugging Face cache only",
                ", ".join(hub_tasks))
    return offline_mode()


# -- explaining a failure ---------------------------------------------------------------------------------------------
def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _network_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the hub or the network could not be reached."""
    return any(isinstance(e, (ConnectionError, TimeoutError)) or type(e).__module__.split(".")[0] in NETWORK_MODULES
               for e in _chain(err))


def need(err: BaseException) -> str | None:
    """What a hub task lacked, judging by the error its loading raised; None where ``err`` is another failure."""
    missing = next((e.name for e in _chain(err) if isinstance(e, ModuleNotFoundError)
                    and (e.name or "").split(".")[0] in HUB_PACKAGES), None)
    if missing:
        return f"the Python package {missing} (pip install 'engram-lab[hub]')"
    if _network_failure(err):
        return "the Hugging Face hub, which cannot be reached from here (nor is its data in the local cache)"
    return None


def explain(err: BaseException, hub_tasks: list[str], load=None) -> HubUnavailable | None:
    """A :class:`HubUnavailable` for ``err``, raised while running ``hub_tasks`` (and maybe others), or None where
    ``err`` is another kind of failure (which should surface as it is).

    ``load(task)``: loads one task (a ``TaskManager``'s ``load([task])``); each hub task is then tried on its own so
    that every line names its own reason. Without it, every hub task gets ``err``'s reason.
    """
    first = need(err)
    if first is None or not hub_tasks:
        return None

    def line(task: str) -> str | None:
        why = first
        if load is not None:
            try:
                load(task)
                return None  # this one loads: it is not what failed
            except Exception as task_err:
                why = need(task_err)
                if why is None:
                    return f"{task} failed to load ({type(task_err).__name__}: {task_err})"
        return f"{task} needs {why}; offline, use {replacement(task)}"

    lines = [text for text in map(line, hub_tasks) if text] or [
        f"{task} needs {first}; offline, use {replacement(task)}" for task in hub_tasks]
    return HubUnavailable("\n".join(lines) + f"\n(the first error was {type(err).__name__}: {err})")
