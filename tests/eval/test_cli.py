"""``engram-lab eval`` as documented, the Python route, local copies of hub tasks, and the message without the hub."""

import csv
import http.server
import importlib.util
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import huggingface_hub.constants
import lm_eval

from engram_lab.cli import main
from eval.hub import OFFLINE_VARIABLES, HubUnavailable, explain, hub_reachable
from eval.lm import EngramEvalLM
from eval.run import checkpoint_run_id
from eval.tasks import TaskOptions, prepare, task_manager
from experiments.config import trial_id
from engram_lab.records import EVAL_FIELDS, eval_path, read_eval_record
from experiments.tokenizer import Tokenizer

from .conftest import CONTEXT


def run_folder(checkpoint):
    """(sweep folder name, run id) of the tiny checkpoint: runs/<sweep or _runs>/<run_id>/model."""
    return Path(checkpoint).parent.parent.name, Path(checkpoint).parent.name


def test_eval_command_writes_one_record_per_task_and_prints_a_table(checkpoint, tmp_path, capsys):
    argv = ["eval", checkpoint, "--tasks", "engram_world_knowledge", "--limit", "5", "--samples", "20",
            "--results", str(tmp_path), "--device", "cpu", "--batch-size", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "engram_world_knowledge" in out and "acc" in out
    sweep_folder, rid = run_folder(checkpoint)
    rec = read_eval_record(eval_path(tmp_path, "", rid, "engram_world_knowledge"))
    assert set(EVAL_FIELDS) <= set(rec)
    assert (rec["run_id"], rec["sweep"], rec["memory"], rec["limit"], rec["n_samples"]) == (rid, "", "on", 5, 5)
    assert rec["lm_eval_version"] == lm_eval.__version__ and rec["task_version"] == 1 and rec["num_fewshot"] == 0
    assert 0.0 <= rec["metrics"]["acc"]["value"] <= 1.0 and rec["metrics"]["acc"]["stderr"] > 0
    assert sweep_folder == "_runs" and Path(rec["checkpoint"]) == Path(checkpoint).resolve()
    root = Path(checkpoint).parents[3]  # the fixture's <root>/runs/_runs/<run_id>/model beside <root>/results
    assert (root / "results" / "_runs" / "runs" / f"{rid}.json").exists()  # the eval record joins its run record


def test_a_written_record_is_replaced_only_when_asked(checkpoint, tmp_path, capsys):
    argv = ["eval", checkpoint, "--tasks", "engram_world_knowledge", "--limit", "2", "--samples", "20",
            "--results", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    path = eval_path(tmp_path, "", run_folder(checkpoint)[1], "engram_world_knowledge")
    path.write_text(json.dumps({**json.loads(path.read_text()), "limit": "marker"}))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"already written: {path}" in err and "--overwrite" in err
    assert read_eval_record(path)["limit"] == "marker"  # refused: the record is untouched
    assert main(argv + ["--overwrite"]) == 0
    assert read_eval_record(path)["limit"] == 2


def test_a_model_folder_kept_elsewhere_gets_the_run_id_of_its_config(checkpoint, tmp_path):
    shutil.copytree(checkpoint, tmp_path / "kept" / "model")
    lm = EngramEvalLM(tmp_path / "kept", device="cpu")
    assert checkpoint_run_id(lm) == trial_id(lm.trial)


def test_eval_command_with_memory_off_writes_its_own_record(checkpoint, tmp_path):
    argv = ["eval", str(Path(checkpoint).parent), "--tasks", "engram_world_knowledge", "--limit", "5",
            "--samples", "20", "--memory", "off", "--results", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    _, rid = run_folder(checkpoint)
    path = eval_path(tmp_path, "", rid, "engram_world_knowledge", memory="off")
    assert path.name == "engram_world_knowledge__memory_off.json" and read_eval_record(path)["memory"] == "off"


def test_python_route_with_the_model_object_and_by_its_registered_name(checkpoint):
    lm = EngramEvalLM(checkpoint, batch_size=4, device="cpu")
    tasks = ["engram_world_knowledge_top100"]
    manager = task_manager(tasks, lm, samples=20)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=4)
    by_name = lm_eval.simple_evaluate(model="engram", model_args=f"ckpt={checkpoint},batch_size=2,device=cpu",
                                      tasks=tasks, task_manager=manager, limit=4)
    assert out["results"][tasks[0]]["acc,none"] == by_name["results"][tasks[0]]["acc,none"]


def write_mmlu_csv(root: Path) -> None:
    """Two subjects in the published layout: {dev,val,test}/<subject>_<split>.csv, no header, letter answers."""
    for subject in ("anatomy", "astronomy"):
        for split, n in (("dev", 5), ("val", 2), ("test", 4)):
            (root / split).mkdir(parents=True, exist_ok=True)
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([f"What is {i} + {i}?", 2 * i, i, i + 1, 3 * i, "ABCD"[i % 4]]
                                        for i in range(n))


def test_local_copies_run_under_lm_evals_own_names(checkpoint, tmp_path):
    write_mmlu_csv(tmp_path / "mmlu")
    bbh_folder = tmp_path / "bbh"
    bbh_folder.mkdir()
    examples = [{"input": "not ( True ) and ( True ) is", "target": "False"}, {"input": "True or False is",
                                                                                "target": "True"}]
    (bbh_folder / "boolean_expressions.json").write_text(json.dumps({"canary": "-", "examples": examples}))
    argv = ["eval", checkpoint, "--tasks", "mmlu_anatomy,mmlu_astronomy,bbh_fewshot_boolean_expressions",
            "--num-fewshot", "1",
            "--mmlu-path", str(tmp_path / "mmlu"), "--bbh-path", str(bbh_folder), "--max-gen-toks", "8",
            "--results", str(tmp_path / "results"), "--device", "cpu"]
    assert main(argv) == 0
    _, rid = run_folder(checkpoint)
    for task, n in (("mmlu_anatomy", 4), ("mmlu_astronomy", 4), ("bbh_fewshot_boolean_expressions", 2)):
        rec = read_eval_record(eval_path(tmp_path / "results", "", rid, task))
        assert rec["n_samples"] == n and rec["num_fewshot"] == 1 and rec["task_version"] in (1.0, 2.0)


def test_a_group_never_runs_on_part_of_a_local_copy(checkpoint, tmp_path, capsys):
    write_mmlu_csv(tmp_path / "mmlu")  # two of the 19 STEM subjects
    argv = ["eval", checkpoint, "--tasks", "mmlu_stem", "--mmlu-path", str(tmp_path / "mmlu"),
            "--results", str(tmp_path / "results")]
    assert main(argv) == 2
    assert "mmlu_stem: not in the local MMLU copy" in capsys.readouterr().err


def test_a_hub_task_without_the_hub_says_what_replaces_it_at_once(checkpoint, tmp_path, capsys, monkeypatch):
    for variable in OFFLINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr("eval.hub.hub_reachable", lambda: False)  # as here; the probe itself is not what is tested
    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE
    argv = ["eval", checkpoint, "--tasks", "mmlu_anatomy,bbh_zeroshot_navigate", "--limit", "2",
            "--results", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 2  # offline mode: no download is tried, so no client retries either
    err = capsys.readouterr().err
    assert "mmlu_anatomy needs the Hugging Face hub" in err and "--mmlu-path DIR" in err
    assert "bbh_zeroshot_navigate needs the Hugging Face hub" in err and "engram_bbh_zeroshot" in err
    assert "OfflineModeIsEnabled" in err
    assert not list(tmp_path.rglob("*.json"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_before  # offline mode ends with the evaluation
    assert not any(v in os.environ for v in OFFLINE_VARIABLES)


def test_the_hub_probe_counts_any_http_answer_and_nothing_else(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to HEAD
    threading.Thread(target=server.handle_request, daemon=True).start()
    with socket.socket() as closed:  # a port bound and never listened on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub_reachable(timeout=5)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert not hub_reachable(timeout=5)
    server.server_close()


def test_hub_message_for_a_missing_package_and_none_for_other_errors():
    missing = ModuleNotFoundError("No module named 'transformers'", name="transformers")
    message = str(explain(missing, ["niah_multiquery", "ruler_vt"]))
    assert "niah_multiquery needs the Python package transformers" in message
    assert "engram_niah_multiquery_<length>" in message and "engram_vt_<length>" in message
    assert explain(KeyError("acc"), ["mmlu"]) is None and explain(ConnectionError("down"), []) is None
    assert isinstance(explain(ConnectionError("down"), ["mmlu"]), HubUnavailable)


def test_unknown_task_ends_the_command_with_its_message(checkpoint, tmp_path, capsys):
    assert main(["eval", checkpoint, "--tasks", "engram_niah_single", "--results", str(tmp_path)]) == 2
    assert "unknown offline task engram_niah_single" in capsys.readouterr().err


def test_hub_ruler_tasks_get_the_checkpoints_tokenizer_in_hugging_face_format(lm):
    prepared = prepare(["niah_multiquery", "engram_world_knowledge"], lm, TaskOptions(samples=10))
    assert (prepared.local, prepared.hub) == (["engram_world_knowledge"], ["niah_multiquery"])
    exported = Path(prepared.metadata["tokenizer"])
    assert json.loads((exported / "tokenizer_config.json").read_text())["model_max_length"] == lm.max_length
    assert Tokenizer.load(exported / "tokenizer.json").fingerprint() == lm.tokenizer.fingerprint()
    assert prepared.metadata["max_seq_lengths"] == [lm.max_length]


def test_export_tokenizer_writes_the_hugging_face_folder(checkpoint, tmp_path, capsys):
    code = main(["export-tokenizer", checkpoint, str(tmp_path / "hf")])
    exported = Tokenizer.load(tmp_path / "hf" / "tokenizer.json")
    assert exported.fingerprint() == Tokenizer.load(Path(checkpoint) / "tokenizer.json").fingerprint()
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == CONTEXT and config["eos_token"] == "<eos>"
    if importlib.util.find_spec("transformers") is None:  # written, but lm-eval's RULER tasks could not load it here
        assert code == 2 and "the Python package transformers" in capsys.readouterr().err
    else:  # loaded back with transformers, which encodes a probe text as the checkpoint's tokenizer does
        assert code == 0
