"""One tiny trained checkpoint for every evaluation test (trained once per session, ~10-30 s on a 2-core CPU)."""

import os
import tempfile
from contextlib import contextmanager

import pytest
import torch

# lm-eval reads local JSON through `datasets`, which caches what it prepared: keep that out of the user's home.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="engram-lab-test-hf-datasets-"))

# The tiny trial with a context long enough for the RULER-style prompts (a 512-token vocabulary spends ~600 tokens
# on the variable-tracking prompt before any filler); training still uses 64-token sequences, so it costs the same.
CONTEXT = 1024


@contextmanager
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two threads of ours spinning
    against other work made this folder up to 3 times slower; one thread keeps its time steady."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    from experiments.config import trial_from_dict
    from experiments.train import run_trial
    from tests.experiments.tiny import tiny

    root = tmp_path_factory.mktemp("eval-checkpoint")
    with one_thread():
        record = run_trial(trial_from_dict(tiny(model={"max_seq_len": CONTEXT})), results=root / "results",
                           workdir=root / "runs")
    assert record["status"] == "completed", record["reason"]
    return record["checkpoint"]


@pytest.fixture(scope="session")
def lm(checkpoint):
    from eval.lm import EngramEvalLM

    return EngramEvalLM(checkpoint, batch_size=3, device="cpu")
