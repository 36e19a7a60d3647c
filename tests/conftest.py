import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One tokenizer/token cache for the whole session (subprocesses inherit it), never the user's own cache.
os.environ.setdefault("ENGRAM_LAB_CACHE", tempfile.mkdtemp(prefix="engram-lab-test-cache-"))
SHARED = Path(os.environ.get("ENGRAM_SHARED", REPO.parent / "shared"))


def needs_shared(*parts: str):
    """Skip (with the reason) when the read-only material beside the repository is absent."""
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)
    yield
