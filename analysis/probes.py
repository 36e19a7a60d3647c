"""A minimal reader of probe records (``results/<sweep>/probes/*.json``), for the mechanistic figures of PAPER.md
section 6. Probes are optional: a sweep without a probes folder simply has none.

This file defines the probe record until the probe stage writes its own contract beside the run and eval
records (experiments/records.py); the fields are the least the figures need:

    kind     logit_lens | cka | gate
    run_id   the run the probe was taken on;  sweep;  created
    label    the model's name in legends and titles (e.g. "engram", "moe", "engram vs moe")
    data     logit_lens: {"layers": [i...], "kl": [KL(layer i || final output), ...]}
             cka:        {"rows": model A, "cols": model B, "matrix": [[CKA(layer i of A, layer j of B)]]}
             gate:       {"tokens": [text...], "channels": [name...], "gates": [[alpha per token] per channel]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from experiments.records import RecordError, read_json

PROBE_FIELDS = ("kind", "run_id", "sweep", "label", "data")
PROBE_DATA = {"logit_lens": ("layers", "kl"), "cka": ("matrix",), "gate": ("tokens", "gates")}


def read_probe_record(path: str | Path) -> dict:
    """A validated probe record; :class:`RecordError` names the file and what is wrong."""
    rec = read_json(path)
    missing = [k for k in PROBE_FIELDS if k not in rec]
    if missing:
        raise RecordError(f"{path}: probe record lacks {', '.join(missing)}")
    if rec["kind"] not in PROBE_DATA:
        raise RecordError(f"{path}: probe kind {rec['kind']!r} is not one of {tuple(PROBE_DATA)}")
    lacking = [k for k in PROBE_DATA[rec["kind"]] if k not in (rec["data"] or {})]
    if lacking:
        raise RecordError(f"{path}: {rec['kind']} probe data lacks {', '.join(lacking)}")
    return rec


def load_probes(results: str | Path, sweeps: Iterable[str]) -> list[dict]:
    """Every probe record of ``sweeps``, in file order; none when a sweep has no probes folder."""
    out = []
    for sweep in sweeps:
        for path in sorted((Path(results) / sweep / "probes").glob("*.json")):
            out.append(read_probe_record(path))
    return out
