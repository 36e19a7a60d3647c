"""The reproduction report: one Markdown file with the data accounting, the fitted laws, the comparison with the
paper's claims, the figures and the run table. Everything in it is computed from records and fits."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from analysis import probes, tables
from analysis.claims import CANNOT, CONTRADICTS, SUPPORTS
from analysis.fits import budget_order, seeds_sentence

SECTIONS = ("Summary", "Data", "Fitted laws", "Comparison with the paper", "Probes", "Figures", "Run table",
            "Methods and caveats")
FIGURE_CAPTIONS = {
    "u_curve": "Validation loss against the allocation ratio rho (Figure 3 left).",
    "memory_scaling": "Validation loss against Engram slots, fixed backbone (Figure 3 right).",
    "placement": "Validation loss against Engram placement (Figure 5, layer sweep).",
    "ablation": "Loss change of each ablation against the reference (Figure 5, markers).",
    "long_context": "Long-context evaluations by model (Table 2).",
    "logit_lens": "LogitLens: KL divergence to the final output per layer (section 6).",
    "cka": "Linear CKA between layers of two models, with the best match and soft alignment index (section 6).",
    "gates": "Engram gate activations per token (Figure 7).",
    "gate_ngrams": "N-grams with the highest mean Engram gate over the validation tokens.",
    "memory_off": "Share of each score retained with the Engram output suppressed at inference (Figure 6).",
}


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(ci, digits: int = 4) -> str:
    if ci is None or any(v is None for v in ci):
        return "unbounded"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def build_report(df: pd.DataFrame, fits: dict, figures: dict[str, list[Path]], claim_results: list[dict],
                 out_path: str | Path, probe_records: list[dict] = ()) -> str:
    """The report's Markdown; figure links are relative to ``out_path``'s folder."""
    title = ", ".join(fits["sweeps"]) or "(no sweep)"
    parts = [f"# Reproduction report: {title}\n",
             "Regenerated from stored records by `engram-lab report`; do not edit by hand.\n",
             _summary(fits, claim_results, df), _data(df, fits), _laws(fits), _comparison(claim_results),
             "## Probes\n\n" + probes.summary_markdown(list(probe_records)), _figures(figures, Path(out_path).parent),
             _run_table(df), _methods(fits)]
    return "\n".join(parts)


def _summary(fits: dict, results: list[dict], df: pd.DataFrame) -> str:
    counts = {v: sum(r["verdict"] == v for r in results) for v in (SUPPORTS, CONTRADICTS, CANNOT)}
    r = fits["runs"]
    lines = ["## Summary\n",
             f"- Runs: {r['total']} ({r['completed']} completed; {r['excluded']} excluded from fits: "
             f"{', '.join(f'{k} {v}' for k, v in r['by_status'].items() if k != 'completed') or 'none'}).",
             f"- Paper claims checked: {len(results)}: **{counts[SUPPORTS]} supported**, "
             f"**{counts[CONTRADICTS]} contradicted**, **{counts[CANNOT]} cannot tell**.",
             f"- Intervals are {round(fits['level'] * 100)}% two-sided throughout."]
    per_sweep = Counter(v["sweep"] for v in fits.get("text_versions", []))
    for sweep, n in per_sweep.items():
        lines.append(f"- **{sweep} was scored on {n} versions of its text** (tokenizer and validation set): "
                     "losses of different versions are not on one scale; see Data.")
    stalled = len(unlearned_runs(df))
    if stalled:
        lines.append(f"- **{stalled} completed runs learned no context** (validation loss at or above the unigram "
                     "entropy): see Data.")
    for key in ("u_curve", "u_curve_heldout", "u_curve_one_text", "memory_scaling", "placement", "ablation"):
        if fits.get(key) is not None:
            lines.append(f"- {key}: {fits[key]['verdict']}")
    return "\n".join(lines) + "\n"


def _data(df: pd.DataFrame, fits: dict) -> str:
    lines = ["## Data\n", f"Sweeps: {', '.join(fits['sweeps'])}.\n"]
    if not df.empty:
        counts = df.groupby(["experiment", "status"], dropna=False).size().unstack(fill_value=0).reset_index()
        lines.append(tables.to_markdown(counts))
    bad = fits["runs"]["excluded_runs"]
    if bad:
        lines.append("Runs left out of every fit (kept in the run table):\n")
        lines.append(tables.to_markdown(pd.DataFrame(bad)))
    stalled = unlearned_runs(df)
    if not stalled.empty:
        lines.append("Completed runs whose validation loss ended at or above the unigram entropy of their validation "
                     "text: they learned token frequencies and no context, which points at the trainer, not the "
                     "model (they stay in the fits):\n")
        lines.append(tables.to_markdown(stalled))
    if fits.get("orphan_evals"):
        lines.append(f"Eval records without a run record (not in the table): {', '.join(fits['orphan_evals'])}.\n")
    lines.append(_noise_floor(df))
    if fits.get("text_versions"):
        lines.append("Runs of one sweep with the same data settings were scored on different text: the text under "
                     "`data.path` changed between them (a corpus rebuilt from updated packages moves documents between "
                     "the training and validation splits and retrains the tokenizer). Fits and claims pool the runs as "
                     "recorded; `u_curve_one_text` in the Summary fits the U again with each version's val loss "
                     "offset removed. Each loss's offset is its version's minus the reference's (the version with the "
                     "most runs), from the grid points both reached, with a term per point (± standard error). Where "
                     "a held-out text was scored too, an offset near zero there and not on validation means the "
                     "validation set changed, not the models:\n")
        lines.append(tables.to_markdown(tables.text_versions_table(fits["text_versions"])))
    alloc = df[(df["experiment"] == "allocation") & (df["status"] == "completed")] if not df.empty else df
    if not alloc.empty and {"accounting.P_tot", "accounting.P_act"} <= set(alloc.columns):
        b = alloc["axes.budget"].astype(str) if "axes.budget" in alloc else pd.Series("all", index=alloc.index)
        g = alloc.assign(budget=b).groupby("budget")
        acc = pd.DataFrame({"P_tot (median)": g["accounting.P_tot"].median(),
                            "P_act (median)": g["accounting.P_act"].median(),
                            "rho values": g["accounting.rho"].nunique(), "runs": g.size()}).reset_index()
        acc["P_tot / P_act"] = acc["P_tot (median)"] / acc["P_act (median)"]
        if {"accounting.tokens", "metrics.data.train_tokens_available"} <= set(alloc.columns):
            reads = alloc["accounting.tokens"] / alloc["metrics.data.train_tokens_available"]
            acc["text reads (most)"] = reads.groupby(b).max().reindex(acc["budget"]).to_numpy()
        acc = acc.sort_values("budget", key=lambda s: s.map(budget_order))
        lines.append("Allocation budgets as trained (the paper keeps P_tot / P_act ~ 10 at 5.7B and 9.9B total; text "
                     "reads: a run's training tokens over the training text's, the most at each budget):\n")
        lines.append(tables.to_markdown(acc))
    return "\n".join(lines) + "\n"


def unlearned_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Completed runs whose final validation loss is not below the unigram entropy of their validation text."""
    if df.empty or not {"metrics.val_loss", "metrics.unigram_entropy"} <= set(df.columns):
        return pd.DataFrame()
    done = df[df["status"] == "completed"]
    stalled = done[done["metrics.val_loss"] >= done["metrics.unigram_entropy"]]
    return stalled[["run_id", "sweep", "metrics.val_loss", "metrics.unigram_entropy"]].rename(
        columns={"metrics.val_loss": "val_loss", "metrics.unigram_entropy": "unigram_entropy"})


def _noise_floor(df: pd.DataFrame) -> str:
    summary = tables.noise_summary(tables.noise_floor(df))
    if summary.empty:
        return ("Noise floor: unknown, no grid point has two or more completed seeds (a spec's `seeds:` axis runs "
                "every point at several).\n")
    return ("Noise floor: the sd of validation loss across seeds at one grid point, over the points with two or more "
            "(each point in `tables/noise.md`); a difference between two single runs scatters by 1.4 times it:\n\n"
            + tables.to_markdown(summary))


def _coef_rows(coefs: dict) -> str:
    return ", ".join(f"{k} = {v['estimate']:.5g} {_ci(v.get('ci'), 5)}" for k, v in coefs.items())


def _law_choice(f: dict) -> list[str]:
    """The laws AICc set against each other and the optimum of the one it chose."""
    o, b = f["optimum"], f["optimum"]["bootstrap"]
    laws = "; ".join(f"{m} AICc {c['aicc']:.1f} (weight {c['akaike_weight']:.2f}, rho* {c['rho_star']:.3f})"
                     for m, c in f["selection"]["candidates"].items())
    lines = [f"- laws (fitted to the runs): {laws}",
             f"- **chosen: {o['model']}, rho* = {o['estimate']:.3f} {_ci(o['ci_bootstrap'], 3)}** from {b['draws']} "
             f"seed resamples ({b['scheme']}) that choose the law again: interior in {b['share_interior']:.0%}"]
    s = f.get("seeds_for_target")
    if s is not None:
        lines.append(f"- seeds: {seeds_sentence(s)}")
        for name in ("grid", "refined"):
            if s[name] is not None:
                widths = ", ".join(f"{n}: {_fmt(w, 3) if w is not None and math.isfinite(w) else 'none'}"
                                   for n, w in s[name]["half_widths"].items())
                lines.append(f"  - the error in rho* that {s['level']:.0%} of {s['draws']} simulated sweeps stay "
                             f"within, on {len(s[name]['rhos'])} rho values{' (refined)' if name == 'refined' else ''}, "
                             f"by seeds per point: {widths}")
    return lines


def _laws(fits: dict) -> str:
    lines = ["## Fitted laws\n"]
    u = fits["u_curve"]
    lines.append("### Allocation U-curve\n")
    for budget, f in u.get("budgets", {}).items():
        lines.append(f"**Budget {budget}** (n = {f['n']} runs, {f['n_points']} rho values, "
                     f"{f['n_excluded']} excluded)")
        if f.get("status") == "ok":
            r, g = f["rho_star"], f["loss_gap_rho1"]
            lines += [f"- `{f['formula']}`, {f['method']}; R² = {f['r2']:.3f}, AIC {f['aic']:.1f}, BIC {f['bic']:.1f}",
                      f"- coefficients: {_coef_rows(f['coefficients'])}",
                      f"- rho* = {r['estimate']:.3f}; delta method {_ci(r['ci_delta'], 3)}, parametric bootstrap "
                      f"{_ci(r['ci_bootstrap'], 3)} ({r['bootstrap_draws']} draws, "
                      f"{100 * r['bootstrap_share_convex']:.1f}% convex)",
                      f"- curvature c = {f['curvature']['estimate']:.4g}, one-sided p(c > 0) = "
                      f"{f['curvature']['p_positive']:.2g}; interior optimum: {'yes' if f['interior'] else 'no'}",
                      f"- L(1) - L(rho*) = {g['estimate']:.4f}; delta {_ci(g['ci_delta'])}, bootstrap "
                      f"{_ci(g['ci_bootstrap'])}"]
            if f["optimum"] is not None:
                lines += _law_choice(f)
        lines.append(f"- verdict: {f['verdict']}\n")
    if u.get("stability"):
        s = u["stability"]
        lines.append(f"rho* difference {s['budgets'][1]} minus {s['budgets'][0]}: {s['difference']:+.3f} "
                     f"{_ci(s['ci'], 3)}\n")
    if not u.get("budgets"):
        lines.append(u["verdict"] + "\n")
    heldout = fits.get("u_curve_heldout")
    if heldout is not None:
        lines.append("### Allocation U-curve on the held-out text\n")
        lines.append("The loss on `data.heldout`, a second text source the models never trained on, fitted as above.\n")
        for budget, f in heldout.get("budgets", {}).items():
            lines.append(f"**Budget {budget}** (n = {f['n']} runs, {f['n_points']} rho values)")
            if f.get("status") == "ok" and f["optimum"] is not None:
                lines += _law_choice(f)
            lines.append(f"- verdict: {f['verdict']}\n")
    m = fits["memory_scaling"]
    lines.append("### Memory scaling\n")
    for name, f in m.get("methods", {}).items():
        lines.append(f"**{name}** (n = {f['n']} runs, {f['n_slots']} slot counts)")
        if f.get("status") == "ok":
            ll, pl = f["log_linear"], f["power_law"]
            lines += [f"- `{ll['formula']}`: {_coef_rows(ll['coefficients'])}; R² = {ll['quality']['r2']:.3f}",
                      f"- `{pl['formula']}`: alpha = {pl['coefficients']['alpha']['estimate']:.5f} "
                      f"{_ci(pl['coefficients']['alpha']['ci'], 5)}, a = {pl['coefficients']['a']['estimate']:.4f}; "
                      f"R² = {pl['quality']['r2']:.3f}",
                      f"- AIC on the loss scale: log-linear {ll['quality']['aic_loss_scale']:.1f}, power law "
                      f"{pl['quality']['aic_loss_scale']:.1f}"]
        lines.append(f"- verdict: {f['verdict']}\n")
    for pair, c in m.get("comparisons", {}).items():
        lines.append(f"**{pair}**: {c['verdict']} (`{c['formula']}`, n = {c['n']})\n")
    if m.get("baseline"):
        lines.append(f"No-memory baseline: {_fmt(m['baseline']['mean'])} {_ci(m['baseline']['ci'])} "
                     f"(n = {m['baseline']['n']})\n")
    if not m.get("methods"):
        lines.append(m["verdict"] + "\n")
    pl = fits["placement"]
    lines.append("### Layer placement\n")
    if pl.get("layers") or pl.get("splits"):
        rows = [{"layers (0-based)": k, "n": v["n"], "mean": v["mean"], "sd": v["sd"],
                 "CI low": (v["ci"] or [None, None])[0], "CI high": (v["ci"] or [None, None])[1]}
                for k, v in {**pl["layers"], **pl["splits"]}.items()]
        lines.append(tables.to_markdown(pd.DataFrame(rows)))
    lines.append(f"- verdict: {pl['verdict']}\n")
    ab = fits["ablation"]
    lines.append("### Ablations\n")
    if ab.get("deltas"):
        ordered = sorted(ab["deltas"].items(), key=lambda kv: -kv[1]["difference"])
        rows = [{"switch": k, "n": sum(v["n"]), "delta vs reference": v["difference"],
                 "CI low": (v["ci"] or [None, None])[0], "CI high": (v["ci"] or [None, None])[1],
                 "Holm p": v.get("p_holm")} for k, v in ordered]
        lines.append(f"`{ab['formula']}`\n")
        lines.append(tables.to_markdown(pd.DataFrame(rows)))
    lines.append(f"- verdict: {ab['verdict']}\n")
    return "\n".join(lines) + "\n"


def _comparison(results: list[dict]) -> str:
    rows = [{"claim": r["id"], "tag": r["tag"], "paper": r["paper"], "ours (interval)": r["ours"],
             "n": r["n"], "verdict": f"**{r['verdict']}**", "note": r["note"]} for r in results]
    lines = ["## Comparison with the paper\n",
             "Claims and numbers from `analysis/paper_claims.yaml` (transcribed from PAPER.md, with its confidence "
             "tags). A claim is supported only when our interval says so; wide or missing data give "
             "\"cannot tell\".\n",
             tables.to_markdown(pd.DataFrame(rows, columns=["claim", "tag", "paper", "ours (interval)", "n",
                                                            "verdict", "note"]))]
    return "\n".join(lines) + "\n"


def _figures(figures: dict[str, list[Path]], base: Path) -> str:
    lines = ["## Figures\n"]
    missing = [k for k, v in figures.items() if not v]
    for key, paths in figures.items():
        for png in (p for p in paths if p.suffix == ".png"):
            rel = os.path.relpath(png, base)
            pdf = os.path.relpath(png.with_suffix(".pdf"), base)
            lines.append(f"![{FIGURE_CAPTIONS.get(key, key)}]({rel})\n\n*{FIGURE_CAPTIONS.get(key, key)}* "
                         f"([PDF]({pdf}))\n")
    if missing:
        lines.append(f"Not drawn (no records for them): {', '.join(missing)}.\n")
    return "\n".join(lines) + "\n"


def _run_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "## Run table\n\nNo runs.\n"
    return "## Run table\n\n" + tables.to_markdown(tables.run_table(df)) + "\n"


def _methods(fits: dict) -> str:
    level = round(fits["level"] * 100)
    return f"""## Methods and caveats

- **Data.** Every run record of the sweeps is in the run table; only completed runs enter fits, and each fit
  states how many runs of its experiment it left out. rho is the achieved ratio from the accounting, not the
  requested one.
- **U-curve.** Per budget, the verdict reads rho* of the law that AICc chooses among a quadratic, a cubic and an
  asymmetric U fitted to the runs, rho* its minimiser on the sampled range, with a percentile interval from a
  bootstrap over seeds that chooses the law again in every resample; the optimum is shown interior when it lies
  strictly inside the range in at least {level}% of them. The quadratic (WLS on per-rho means with 1/variance
  weights when every rho has two or more seeds, OLS on runs otherwise; rho* = -b/(2c) with delta-method and
  parametric-bootstrap intervals) is reported beside it and drawn. Where the chosen law's interval is wider than
  0.10, the seeds per point that would narrow it to +-0.05 come from sweeps simulated with that law as the truth
  and the budget's pooled seed sd as the noise, each analysed the same way.
- **Memory scaling.** OLS of log loss on log slots (power law) and of loss on log10 slots (the paper's log-linear
  reading), per method; method differences from a pooled two-line fit.
- **Placement and ablations.** Seed means with t-intervals; Welch comparisons, Holm-adjusted across layers or
  switches; a Welch one-way ANOVA across single layers. The best layer is chosen from the same data.
- **Scale.** The paper's models have billions of parameters and ~100B tokens; the sweeps here are far smaller.
  Directions and shapes are comparable; magnitudes (loss drops, slopes) are reported side by side, not expected
  to match.
- **Paper numbers.** Tagged as in PAPER.md: [2+] confirmed by two sources, [1] one source, [D] derived,
  [F] read off a figure by a third party (approximate).
- **Layer indices** are 0-based block indices; the paper's "layer 2" is read as index 1 (PAPER.md 8.5).
- Intervals are {level}% two-sided.
"""
