"""The run table and the fit table, as Markdown, CSV and LaTeX.

Markdown and LaTeX are written here rather than by pandas: ``DataFrame.to_markdown`` needs ``tabulate`` and
``to_latex`` needs ``jinja2``, neither a declared dependency of the project.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis import stats
from engram_lab.files import write_text_atomic

RUN_COLUMNS = ("run_id", "sweep", "experiment", "status", "seed", "model", "accounting.rho", "accounting.P_tot",
               "accounting.P_act", "accounting.engram_slots", "metrics.train_loss", "metrics.val_loss", "reason")
FIT_COLUMNS = ("fit", "group", "quantity", "estimate", "ci_low", "ci_high", "interval", "n", "p")
NOISE_COLUMNS = ("seeds", "mean val_loss", "seed sd")


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ids, status, every sweep axis, the accounting that defines the point, the losses."""
    axes = sorted(c for c in df.columns if c.startswith("axes."))
    cols = [c for c in RUN_COLUMNS[:6] if c in df] + axes + [c for c in RUN_COLUMNS[6:] if c in df]
    return df[cols].sort_values([c for c in ("sweep", "experiment", *axes, "seed") if c in df and
                                 _sortable(df[c])]).reset_index(drop=True)


def _sortable(col: pd.Series) -> bool:
    try:
        sorted(col.dropna().unique())
    except TypeError:
        return False
    return True


def noise_floor(df: pd.DataFrame) -> pd.DataFrame:
    """The seed-to-seed scatter of each grid point: completed runs of one sweep and experiment with the same axes
    but ``axes.seed``, their count, mean validation loss and sd (sd empty below two seeds). Runs without axes (lone
    runs) belong to no grid point and are left out."""
    runs = df[df["status"] == "completed"] if "status" in df else df
    parts = []
    for (sweep, experiment), group in runs.groupby(["sweep", "experiment"], sort=False):
        axes = [c for c in group.columns if c.startswith("axes.") and c != "axes.seed" and group[c].notna().any()]
        if not axes:
            continue
        loss = group.groupby(axes, sort=False, dropna=False)["metrics.val_loss"]
        point = loss.agg(["count", "mean", "std"]).reset_index()
        point.columns = [*axes, *NOISE_COLUMNS]
        parts.append(point.assign(sweep=sweep, experiment=experiment))
    if not parts:
        return pd.DataFrame(columns=["sweep", "experiment", *NOISE_COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    axes = [c for c in table.columns if c.startswith("axes.")]
    order = [c for c in ("sweep", "experiment", *axes) if _sortable(table[c])]
    return table[["sweep", "experiment", *axes, *NOISE_COLUMNS]].sort_values(order).reset_index(drop=True)


def noise_summary(floor: pd.DataFrame) -> pd.DataFrame:
    """Per sweep and experiment, over the grid points with two or more seeds: how many, the mean of their seed sd,
    and the pooled sd (each point's variance weighted by its degrees of freedom: the noise a fit sees)."""
    rows = []
    replicated = floor[floor["seeds"] >= 2]
    for (sweep, experiment), g in replicated.groupby(["sweep", "experiment"], sort=False):
        rows.append({"sweep": sweep, "experiment": experiment, "points with 2+ seeds": len(g),
                     "mean seed sd": float(g["seed sd"].mean()), "pooled seed sd": pooled_sd(g)})
    return pd.DataFrame(rows, columns=["sweep", "experiment", "points with 2+ seeds", "mean seed sd",
                                       "pooled seed sd"])


def pooled_sd(floor: pd.DataFrame) -> float | None:
    """The seed sd pooled over the grid points of a :func:`noise_floor` table with two or more seeds, each point's
    variance weighted by its degrees of freedom (None without such a point)."""
    replicated = floor[floor["seeds"] >= 2]
    return stats.pooled_sd(replicated["seeds"], replicated["seed sd"])


def text_versions_table(versions: list[dict]) -> pd.DataFrame:
    """The text versions of ``fits["text_versions"]`` (:func:`analysis.fits.fit_text_versions`), one row each, the
    offsets as ``estimate ± se``."""
    rows = []
    for v in versions:
        reference = v["shared_points"] is None
        row = {"sweep": v["sweep"], "text": v["text"], "runs": v["runs"], "points": v["points"],
               "first run": v["first_run"], "last run": v["last_run"],
               "points shared with the reference": "reference" if reference else v["shared_points"]}
        for loss, est in v["offsets"].items():
            row[f"{loss} offset"] = ("0 (reference)" if reference else "no shared point" if est is None else
                                     f"{est[0]:+.4f} ± {est[1]:.4f}")
        rows.append(row)
    return pd.DataFrame(rows)


def fit_table(fits: dict) -> pd.DataFrame:
    """Every fitted quantity with its interval, one row each (columns FIT_COLUMNS)."""
    rows = []

    def add(fit, group, quantity, est, ci=None, interval="", n=None, p=None):
        ci = ci or [None, None]
        rows.append({"fit": fit, "group": group, "quantity": quantity, "estimate": est, "ci_low": ci[0],
                     "ci_high": ci[1], "interval": interval, "n": n, "p": p})

    for key in ("u_curve", "u_curve_heldout", "u_curve_one_text"):
        for budget, f in (fits.get(key) or {}).get("budgets", {}).items():
            if f.get("status") != "ok":
                add(key, budget, "status: " + f["status"], None, n=f["n"])
                continue
            o = f["optimum"]
            if o is not None:
                add(key, budget, f"rho* ({o['model']} law, AICc)", o["estimate"], o["ci_bootstrap"],
                    f"seed bootstrap ({o['bootstrap']['scheme']})", f["n"])
                add(key, budget, "share of resamples with an interior optimum", o["bootstrap"]["share_interior"],
                    n=f["n"])
                for m, c in f["selection"]["candidates"].items():
                    add(key, budget, f"AICc {m} - lowest", c["delta_aicc"], n=f["n"])
            r, c, g = f["rho_star"], f["curvature"], f["loss_gap_rho1"]
            add(key, budget, "rho* (quadratic)", r["estimate"], r["ci_delta"], "delta method", f["n"])
            add(key, budget, "rho* (quadratic)", r["estimate"], r["ci_bootstrap"], "parametric bootstrap", f["n"])
            add(key, budget, "curvature c", c["estimate"], f["coefficients"]["c"]["ci"], "t", f["n"],
                c["p_positive"])
            add(key, budget, "L(1) - L(rho*) (quadratic)", g["estimate"], g["ci_bootstrap"], "parametric bootstrap",
                f["n"])
            add(key, budget, "R2 (quadratic)", f["r2"], n=f["n"])
    ms = fits["memory_scaling"]
    for method, m in ms.get("methods", {}).items():
        if m.get("status") != "ok":
            continue
        b = m["log_linear"]["coefficients"]["b"]
        a = m["power_law"]["coefficients"]["alpha"]
        add("memory_scaling", method, "slope per decade (log-linear)", b["estimate"], b["ci"], "t", m["n"], b["p"])
        add("memory_scaling", method, "alpha (power law)", a["estimate"], a["ci"], "t", m["n"], a["p"])
        add("memory_scaling", method, "R2 (log-linear)", m["log_linear"]["quality"]["r2"], n=m["n"])
    for pair, c in ms.get("comparisons", {}).items():
        for key, label in (("level_difference_at_reference", "loss difference at reference slots"),
                           ("slope_difference_per_decade", "slope difference per decade"),
                           ("alpha_difference", "alpha difference")):
            add("memory_scaling", pair, label, c[key]["estimate"], c[key]["ci"], "t", c["n"], c[key]["p"])
    pl = fits["placement"]
    for name, s in {**pl.get("layers", {}), **pl.get("splits", {})}.items():
        add("placement", name, "mean val_loss", s["mean"], s["ci"], "t over seeds", s["n"])
    for name, d in pl.get("versus_best", {}).items():
        add("placement", f"{name} vs best {pl['best_layer']}", "loss difference", d["difference"], d["ci"], "Welch",
            sum(d["n"]), d.get("p_holm", d["p"]))
    for name, d in pl.get("splits_versus_best", {}).items():
        add("placement", f"{name} vs best {pl['best_layer']}", "loss difference", d["difference"], d["ci"], "Welch",
            sum(d["n"]), d["p"])
    if "depth_trend" in pl:
        s = pl["depth_trend"]["slope_per_layer"]
        add("placement", "single layers", "loss slope per layer", s["estimate"], s["ci"], "t", pl["n"], s["p"])
    for name, d in fits["ablation"].get("deltas", {}).items():
        add("ablation", name, "loss minus reference", d["difference"], d["ci"], "Welch", sum(d["n"]),
            d.get("p_holm", d["p"]))
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1e4):
        return f"{int(v):d}" if abs(v) < 1e7 else f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers to 5 significant digits; pipes in cells escaped)."""
    head = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    cols = "l" * len(df.columns)
    out = ["\\begin{table}[t]", "\\centering", "\\small"]
    if caption:
        out.append(f"\\caption{{{_tex(caption)}}}")
    if label:
        out.append(f"\\label{{{label}}}")
    out += [f"\\begin{{tabular}}{{{cols}}}", "\\toprule", " & ".join(_tex(str(c)) for c in df.columns) + " \\\\",
            "\\midrule"]
    out += [" & ".join(_tex(_cell(v)) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV with list and tuple cells as JSON (so that ``axes.layers`` survives a round trip)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: json.dumps(_plain(v)) if isinstance(v, (list, tuple, dict)) else v)
    return out.to_csv(index=False)


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_tables(df: pd.DataFrame, fits: dict, out_dir: str | Path) -> list[Path]:
    """``table.csv`` (the whole tidy table) and ``tables/{runs,fits,noise}.{md,csv,tex}`` under ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_text_atomic(out_dir / "table.csv", to_csv(df))]
    level = round(fits["level"] * 100)
    for name, table, caption in (("runs", run_table(df), "Runs (all statuses)"),
                                 ("fits", fit_table(fits), f"Fitted quantities ({level}% intervals)"),
                                 ("noise", noise_floor(df), "Seed-to-seed scatter of validation loss per grid point")):
        paths.append(write_text_atomic(out_dir / "tables" / f"{name}.md", to_markdown(table)))
        paths.append(write_text_atomic(out_dir / "tables" / f"{name}.csv", to_csv(table)))
        paths.append(write_text_atomic(out_dir / "tables" / f"{name}.tex", to_latex(table, caption, f"tab:{name}")))
    return paths
