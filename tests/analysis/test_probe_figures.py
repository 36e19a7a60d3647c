"""Probe records -> figures: reading records, the gate figure's text layout and rendering, the memory-off table."""

import numpy as np
import pytest

from analysis import probes
from analysis.simulate import make_run_record, simulate_probes, write_sweep
from engram_lab.records import RecordError, probe_path
from engram_lab.files import write_atomic


def test_load_probes_reads_every_record_of_a_sweep_and_names_a_malformed_one(tmp_path):
    run = make_run_record(sweep="s", experiment="allocation")
    write_sweep(tmp_path, [run], probes=simulate_probes(np.random.default_rng(0), run))
    assert sorted(p["kind"] for p in probes.load_probes(tmp_path, ["s"])) == ["cka", "gate", "logit_lens",
                                                                             "logit_lens", "memory_off"]
    assert probes.load_probes(tmp_path, ["no-probes-here"]) == []
    lens = next(p for p in probes.load_probes(tmp_path, ["s"]) if p["kind"] == "logit_lens")
    bad = probe_path(tmp_path, "s", run["run_id"], "gate", against="x")
    write_atomic(bad, {**lens, "kind": "gate"})  # a gate record holding LogitLens data
    with pytest.raises(RecordError, match=f"{bad}: gate probe data lacks"):
        probes.load_probes(tmp_path, ["s"])


def test_text_lines_wrap_at_the_width_and_after_each_newline():
    lines = probes._text_lines(["ab", "cd\n", "efg", "hi", "jk"], width=5)
    assert lines == [[(0, 0, "ab"), (1, 2, "cd\u21b5")], [(2, 0, "efg"), (3, 3, "hi")], [(4, 0, "jk")]]


def test_gate_heatmap_renders_to_a_file(tmp_path):
    tokens = ["By", " the", " way", ",", " the", " Milky", " Way", "\n", "Alexander", " the", " Great"]
    rec = {"kind": "gate", "run_id": "abc", "label": "engram", "data": {
        "tokens": tokens, "channels": ["layer 1 branch 0", "layer 1 branch 1"],
        "gates": np.linspace(0.01, 0.99, 2 * len(tokens)).reshape(2, -1).tolist(), "top_ngrams": []}}
    paths = probes.gates([rec], tmp_path)
    assert [p.name for p in paths] == ["gates_abc.png", "gates_abc.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert probes.gate_ngrams([rec], tmp_path) == []  # no N-gram was frequent enough: nothing to draw


def test_memory_off_table_orders_halves_then_categories_then_tasks_and_skips_unscored_rows():
    def row(name, group, kind, retained, metric="next-token accuracy"):
        return {"name": name, "group": group, "kind": kind, "metric": metric, "retained": retained}

    rec = {"kind": "memory_off", "label": "engram", "run_id": "abc", "data": {"rows": [
        row("mmlu", "task", None, 0.7, metric="acc"), row("arithmetic", "category", "dynamic", 0.9),
        row("dynamic", "kind", "dynamic", 0.8), row("biography", "category", "static", 0.4),
        row("static", "kind", "static", 0.5), row("needle", "category", "dynamic", None)]}}
    table = probes.memory_off_table([rec])
    assert table["name"].tolist() == ["static", "dynamic", "biography", "arithmetic", "mmlu (acc)"]
    assert table["retained"].tolist() == [0.5, 0.8, 0.4, 0.9, 0.7]


def test_the_report_section_states_each_probes_numbers():
    run = make_run_record(sweep="s", experiment="allocation")
    recs = simulate_probes(np.random.default_rng(0), run)
    text = probes.summary_markdown(recs)
    lens = next(p for p in recs if p["kind"] == "logit_lens")
    assert "**LogitLens**" in text and " | ".join(f"{v:.3f}" for v in lens["data"]["kl"]) in text
    cka = next(p for p in recs if p["kind"] == "cka")["data"]
    assert f"| 1 | {cka['best_match'][1]} | {cka['soft_alignment'][1]:.2f} |" in text
    assert "**Top gated N-grams**" in text and "**Memory off**" in text and "In-context copying" not in text
    copying = {"kind": "induction", "run_id": "abc", "label": "engram", "data": {
        "first_loss": 8.3, "repeat_loss": 0.25, "uniform_loss": 8.315, "repeat_accuracy": 0.96}}
    assert "| engram | 8.300 | 0.250 | 8.315 | 0.960 |" in probes.summary_markdown(recs + [copying])
    assert probes.summary_markdown([]).startswith("No probe records")
