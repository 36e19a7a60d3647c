"""The exported model: what evaluation and probes load, independent of Lightning.

A model folder holds ``model.pt`` (plain tensors and numbers: the state dict and the compression map, loadable with
``torch.load(weights_only=True)``), ``config.json`` (the resolved trial config) and ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from engram.compress import Compression
from engram.config import build
from engram.model import EngramLM
from experiments.config import TrialConfig
from experiments.tokenizer import Tokenizer


def save_model(folder: str | Path, model: EngramLM, trial: TrialConfig, tokenizer: Tokenizer,
               state_dict: dict | None = None) -> Path:
    """``state_dict``: the model's, when ``model`` cannot give it whole itself (tables sharded over ranks:
    :func:`engram.sharded.whole_state_dict`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comp = getattr(model, "compression", None) or Compression.identity(model.config.vocab_size)
    state_dict = model.state_dict() if state_dict is None else state_dict
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "compression_lookup": torch.tensor(comp.lookup, dtype=torch.long),
        "compression_size": comp.size,
    }
    tmp = folder / f".model.pt.{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(trial.to_dict(), indent=1, sort_keys=True))
    tokenizer.save(folder / "tokenizer.json")
    return folder


def _model_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "model.pt").exists():
        raise FileNotFoundError(f"{folder} is not a model folder (no model.pt); pass runs/<sweep>/<run_id>/model (a "
                                "run record names its model as the machine that trained it saved it)")
    return folder


def load_trial_config(folder: str | Path) -> TrialConfig:
    return build(TrialConfig, json.loads((_model_folder(folder) / "config.json").read_text()))


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[EngramLM, Tokenizer, TrialConfig]:
    """The model (eval mode, on ``device``), its tokenizer and the trial config it was trained with."""
    folder = _model_folder(folder)
    trial = load_trial_config(folder)
    payload = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    comp = Compression(tuple(payload["compression_lookup"].tolist()), int(payload["compression_size"]))
    model = EngramLM(trial.model, comp)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), Tokenizer.load(folder / "tokenizer.json"), trial
