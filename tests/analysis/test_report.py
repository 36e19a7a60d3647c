"""Figures, tables and the report regenerated from records written as real files."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis import claims, paper_figures, report, tables
from analysis.data import frame_from_records, task_is
from analysis.simulate import (make_run_record, simulate_ablation, simulate_long_context, simulate_placement,
                               simulate_power_law, simulate_probes, simulate_u_curve, write_sweep)

SWEEP = "paper"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """One sweep with every experiment, evals, probes and two broken runs, regenerated once for all tests."""
    results = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    runs = (simulate_u_curve(rng, seeds=2, sweep=SWEEP) + simulate_power_law(rng, baseline=1.808, sweep=SWEEP)
            + simulate_placement(rng, seeds=2, sweep=SWEEP) + simulate_ablation(rng, sweep=SWEEP))
    runs += [make_run_record(sweep=SWEEP, experiment="allocation", status="failed",
                             axes={"rho": 0.5, "budget": "2e20"}),
             make_run_record(sweep=SWEEP, experiment="placement", status="diverged", axes={"layers": [3]})]
    write_sweep(results, runs, simulate_long_context(rng, runs), simulate_probes(rng, runs[0]))
    written = paper_figures.regenerate(results, n_boot=500)
    return results, written[SWEEP], runs


def test_every_output_is_written(regenerated):
    results, written, _ = regenerated
    out = results / SWEEP
    for name in ("fits.json", "table.csv", "report.md"):
        assert (out / name).is_file()
    for name in ("runs", "fits"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{name}.{ext}").is_file()
    figures = {p.name for p in written["figures"]}
    for stem in ("u_curve", "memory_scaling", "placement", "ablation", "long_context", "logit_lens"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= figures
    assert any(n.startswith("cka_") for n in figures) and any(n.startswith("gates_") for n in figures)
    assert all(p.stat().st_size > 0 for p in written["figures"])


def test_redrawing_from_the_same_records_gives_the_same_figures(regenerated):
    results, written, _ = regenerated
    before = {p.name: p.read_bytes() for p in written["figures"]}
    again = paper_figures.analyse(results, [SWEEP], steps=("figures",), n_boot=500)["figures"]
    assert {p.name: p.read_bytes() for p in again} == before


def test_report_has_every_section_claim_and_working_figure_links(regenerated):
    results, written, _ = regenerated
    text = (results / SWEEP / "report.md").read_text()
    for section in report.SECTIONS:
        assert f"\n## {section}\n" in text
    for claim in claims.load_claims()["claims"]:
        assert claim["id"] in text
    links = re.findall(r"\]\(([^)]+\.(?:png|pdf))\)", text)
    assert links and all((results / SWEEP / link).is_file() for link in links)
    assert "failed 1" in text and "diverged 1" in text  # excluded runs are reported, not hidden


def test_table_keeps_every_run_and_round_trips_list_axes(regenerated):
    results, _, runs = regenerated
    table = pd.read_csv(results / SWEEP / "table.csv")
    assert len(table) == len(runs)
    assert set(table["status"]) == {"completed", "failed", "diverged"}
    layers = table.loc[table["experiment"] == "placement", "axes.layers"].dropna().map(json.loads)
    assert [1, 5] in list(layers)


def test_fits_json_counts_the_excluded_runs(regenerated):
    results, _, _ = regenerated
    f = json.loads((results / SWEEP / "fits.json").read_text())
    assert f["runs"]["excluded"] == 2
    assert f["placement"]["n_excluded"] == 1 and f["u_curve"]["budgets"]["2e20"]["n_excluded"] == 1
    for key in ("u_curve", "memory_scaling", "placement", "ablation"):
        assert f[key]["verdict"]


def test_every_claim_has_a_check_and_a_verdict(regenerated):
    for claim in claims.load_claims()["claims"]:
        assert claim["check"] in claims.CHECKS, claim["id"]
        assert claim["tag"] in ("[2+]", "[1]", "[D]", "[F]")
    empty = {"level": 0.95, "u_curve": {"verdict": "cannot tell"}, "memory_scaling": {}, "placement": {},
             "ablation": {}}
    results = claims.evaluate(empty, pd.DataFrame(columns=["model"]))
    assert {r["verdict"] for r in results} == {claims.CANNOT}  # no data: nothing is claimed either way


def test_verdict_rules():
    assert claims.interval_sign([0.1, 0.2], +1) == claims.SUPPORTS
    assert claims.interval_sign([-0.2, -0.1], +1) == claims.CONTRADICTS
    assert claims.interval_sign([-0.1, 0.2], +1) == claims.CANNOT
    assert claims.interval_sign([0.1, None], -1) == claims.CANNOT
    assert claims.interval_in_range([0.74, 0.82], 0.75, 0.80, 0.05) == claims.SUPPORTS
    assert claims.interval_in_range([0.90, 0.95], 0.75, 0.80, 0.05) == claims.CONTRADICTS
    assert claims.interval_in_range([0.5, 0.9], 0.75, 0.80, 0.05) == claims.CANNOT
    assert claims.combine([claims.SUPPORTS, claims.CANNOT]) == claims.CANNOT
    assert claims.combine([claims.SUPPORTS, claims.CONTRADICTS]) == claims.CONTRADICTS


def test_the_engram_end_is_judged_from_measured_points_against_pure_moe():
    """The left arm of the U: the lowest sampled rho (below 0.3) above the pure-MoE loss supports, below it
    contradicts, a curve sampled only from 0.4 cannot tell; Welch over the seeds of the two points."""
    claim = next(c for c in claims.load_claims()["claims"] if c["id"] == "allocation.engram_end_above_moe")

    def judged(low_rho: float, low_mean: float) -> dict:
        points = [{"rho": low_rho, "n": 4, "mean": low_mean, "sd": 0.02},
                  {"rho": 0.8, "n": 4, "mean": 3.30, "sd": 0.02}, {"rho": 1.0, "n": 4, "mean": 3.40, "sd": 0.02}]
        fits = {"level": 0.95, "u_curve": {"budgets": {"7e14": {"status": "ok", "points": points}}}}
        return claims.CHECKS[claim["check"]](claim, fits, None, {})

    assert judged(0.0, 3.50)["verdict"] == claims.SUPPORTS
    below = judged(0.1, 3.30)
    assert below["verdict"] == claims.CONTRADICTS and "L(0.1) - L(1) = -0.1000" in below["ours"]
    assert judged(0.0, 3.41)["verdict"] == claims.CANNOT  # 0.01 apart with seed sds of 0.02
    assert judged(0.4, 3.60)["verdict"] == claims.CANNOT


def test_markdown_and_latex_escape_their_special_characters():
    df = pd.DataFrame({"a_b": ["x|y", "50%"], "n": [1, 2.5]})
    md = tables.to_markdown(df)
    assert "x\\|y" in md and md.splitlines()[1] == "|---|---|"
    tex = tables.to_latex(df, caption="runs & fits", label="tab:x")
    assert "a\\_b" in tex and "50\\%" in tex and "runs \\& fits" in tex and "\\toprule" in tex


def test_the_offline_packs_answer_the_benchmark_claims():
    """The claims on benchmarks find the offline packs' records by task name (and those of lm-eval's own tasks)."""
    by_id = {c["id"]: c for c in claims.load_claims()["claims"]}

    def matches(claim_id: str, key: str, task: str) -> bool:
        return task_is(task, by_id[claim_id][key])

    assert matches("longctx.mq_niah", "task_prefixes", "engram_niah_multiquery_512")
    assert matches("longctx.mq_niah", "task_prefixes", "niah_multiquery")
    assert matches("longctx.variable_tracking", "task_prefixes", "engram_vt_1024")
    assert matches("sensitivity.factual_vs_reading", "factual_prefixes", "engram_world_knowledge_cloze")
    assert matches("sensitivity.factual_vs_reading", "reading_prefixes", "engram_niah_single_512")


def test_runs_that_learned_no_context_are_named():
    runs = simulate_u_curve(np.random.default_rng(0), seeds=1, sweep=SWEEP)
    stalled = runs[3]
    stalled["metrics"]["val_loss"] = stalled["metrics"]["unigram_entropy"]  # token frequencies, nothing more
    df = frame_from_records(runs)
    assert list(report.unlearned_runs(df)["run_id"]) == [stalled["run_id"]]
    text = report._data(df, {"sweeps": [SWEEP], "runs": {"excluded_runs": []}})
    assert "learned token frequencies and no context" in text and stalled["run_id"] in text
    assert report.unlearned_runs(frame_from_records(runs[4:])).empty


def test_the_budgets_table_says_how_often_a_run_read_its_text():
    runs = simulate_u_curve(np.random.default_rng(0), seeds=1, sweep=SWEEP)
    for r in runs:
        r["metrics"]["data"] = {"train_tokens_available": r["accounting"]["tokens"] // 2}  # every run reads it twice
    runs[0]["metrics"]["data"]["train_tokens_available"] = runs[0]["accounting"]["tokens"] // 4
    text = report._data(frame_from_records(runs), {"sweeps": [SWEEP], "runs": {"excluded_runs": []}})
    table = text[text.index("| budget |"):]
    budget = str(runs[0]["axes"]["budget"])
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in table.splitlines()[2:] if line}
    assert "text reads (most)" in table.splitlines()[0] and float(rows[budget]) == 4.0
    assert all(float(v) == 2.0 for b, v in rows.items() if b != budget)
