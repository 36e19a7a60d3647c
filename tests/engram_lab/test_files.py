"""The file helpers every stage writes through."""

import json
import subprocess
import sys

import pytest

from engram_lab.files import Busy, exclusive_lock, write_atomic


def test_nan_and_infinities_are_written_as_null_so_the_file_stays_json(tmp_path):
    path = write_atomic(tmp_path / "r.json", {"val_loss": float("nan"), "curve": [[1, float("inf")], (2, 1.5)]})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"val_loss": None, "curve": [[1, None], [2, 1.5]]}


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_behind(tmp_path):
    path = write_atomic(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        write_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(FileExistsError):
        write_atomic(path, {"a": 2}, overwrite=False)
    assert json.loads(path.read_text()) == {"a": 1}


def test_an_exclusive_lock_held_by_another_process_is_busy_and_names_its_holder(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom engram_lab.files import exclusive_lock\n"
                               f"with exclusive_lock({str(lock)!r}):\n print('held', flush=True)\n time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match="held by another process"):
            with exclusive_lock(lock):
                pass
        assert (tmp_path / ".lock.holder").read_text().split()[1] == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(lock):  # the kernel released it with its holder
        pass
