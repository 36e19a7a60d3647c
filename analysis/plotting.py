"""The paper's figures, drawn only from the run table and the fits (seaborn on the Agg backend).

One function per figure; each returns the files it wrote (a PNG and a PDF) or an empty list when the records hold
nothing to draw; the ``*_figure`` function behind it returns the figure itself (None when there is nothing to
draw). Sizes are for a two-column paper: 3.5 in per column, 7 in across, every font at least 7 pt. Losses are the
records' validation losses: mean cross-entropy per token with the natural log, so nats per token.

    u_curves        Figure 3 left: loss vs rho per budget, seed means ± s.e., fitted quadratic with its confidence
                    band and the law chosen by AICc; rho* and its interval only where the fit shows an interior
                    optimum
    memory_scaling  Figure 3 right: loss vs Engram slots (log x) per method, fitted log-linear and power laws
    placement       Figure 5 (layer sweep): loss per single layer and per split, seed t-intervals
    ablation        Figure 5 (markers): loss change of each switch vs the reference, Welch intervals
    long_context    Table 2 as bars: niah* / ruler* / vt* / mq* eval metrics grouped by model

The probe figures of section 6 (LogitLens, CKA, gates, memory-off) are drawn from probe records by analysis.probes.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.data import completed_runs, eval_columns, split_eval_column, task_is  # noqa: E402
from analysis.fits import LOSS, layer_name, placement_layers  # noqa: E402

COLUMN_IN = 3.5
PAGE_IN = 7.0
HEIGHT_IN = 2.4
LONG_CONTEXT_PREFIXES = ("niah", "ruler", "vt", "mq", "needle")
FONT = {"font.size": 7, "axes.labelsize": 7, "axes.titlesize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "legend.title_fontsize": 7, "lines.linewidth": 1.0, "lines.markersize": 3.5,
        "axes.linewidth": 0.6, "savefig.dpi": 300, "pdf.fonttype": 42}
LOSS_LABEL = "validation loss (nats/token)"
RHO_STAR_GID = "rho_star"  # tags the rho* line and band, so that a test can tell whether an optimum was drawn
ABLATION_LABELS = {
    "no_compression": "no tokenizer compression",
    "no_compress": "no tokenizer compression",
    "no_gate": "no gate",
    "no_conv": "no short conv",
    "plus_4gram": "+ 4-grams",
    "no_multi_branch": "single-branch fusion",
    "single_head": "single hash head (K=1)",
    "single_row_table": "one-row tables (capacity 1)",
    "frozen_random_table": "frozen random tables",
    "bigram_hash": "additive bigram hash",
    "signed_sqrt_gate": "signed-sqrt gate",
    "default_conv_init": "default conv init",
    "row_sparse_adam": "row-sparse Adam on tables",
    "no_memory": "no memory (MoE only)",
    "no_engram": "no memory (MoE only)",
    "overencoding": "OverEncoding baseline",
}
RHO_LABEL = r"allocation ratio $\rho$ (share of sparse parameters to MoE)"
ABLATION_LABEL_WIDTH = 22  # characters per line of an ablation's tick label


def style() -> dict:
    """rc parameters: seaborn's ticks style and paper context with fonts pinned at 7-8 pt (used as a context, so
    importing this module changes nothing global)."""
    return {**sns.axes_style("ticks"), **sns.plotting_context("paper"), **FONT}


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` atomically (temporary file, then rename) and close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "pdf"):
        path = out_dir / f"{name}.{fmt}"
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=f".{fmt}")
        os.close(fd)
        try:
            # the style again: savefig reads its dpi and PDF font type from rcParams at save time
            with plt.rc_context(style()):
                # a fixed creation date keeps regenerated PDFs byte-identical when the records have not changed
                fig.savefig(tmp, format=fmt, bbox_inches="tight",
                            metadata={"CreationDate": None} if fmt == "pdf" else {})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    plt.close(fig)
    return paths


def _saved(fig, out_dir, name: str) -> list[Path]:
    return [] if fig is None else save(fig, out_dir, name)


def _runs(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    return completed_runs(df[df["experiment"] == experiment]) if "experiment" in df else df.iloc[:0]


def _mean_se(values: pd.Series) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), (float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan)


def _percent(level: float) -> str:
    return f"{round(level * 100)}%"


def u_curves(df: pd.DataFrame, fits: dict, out_dir) -> list[Path]:
    """The U-curve figure (:func:`u_curve_figure`) as ``u_curve.png`` and ``.pdf``."""
    return _saved(u_curve_figure(df, fits), out_dir, "u_curve")


def u_curve_figure(df: pd.DataFrame, fits: dict):
    """Loss vs achieved rho, one panel per budget: runs, seed means ± s.e., the fit with its confidence band, and
    rho* with its interval where the fit shows an interior optimum (a curve whose minimum is not shown inside the
    sampled range gets a note instead of a marker)."""
    runs = _runs(df, "allocation")
    budgets = fits["u_curve"].get("budgets", {})
    if runs.empty or not budgets:
        return None
    level = fits["level"]
    with plt.rc_context(style()):
        n = len(budgets)
        fig, axes = plt.subplots(1, n, figsize=(COLUMN_IN if n == 1 else PAGE_IN, HEIGHT_IN), squeeze=False)
        colors = sns.color_palette("colorblind", n)
        bcol = runs["axes.budget"].astype(str) if "axes.budget" in runs else pd.Series("all", index=runs.index)
        for ax, color, (budget, f) in zip(axes[0], colors, budgets.items()):
            g = runs[bcol == budget]
            ax.scatter(g["accounting.rho"], g[LOSS], color=color, alpha=0.35, s=8, linewidth=0, label="run")
            pts = pd.DataFrame(f["points"], columns=["rho", "mean", "sd", "n"])  # none for a run without a budget
            se = pts["sd"] / np.sqrt(pts["n"])
            ax.errorbar(pts["rho"], pts["mean"], yerr=se.where(pts["n"] > 1), fmt="o", color=color, capsize=1.5,
                        label="mean ± s.e. over seeds" if (pts["n"] > 1).any() else "mean over seeds")
            if f.get("status") == "ok":
                _draw_fit(ax, f, color, level)
            ax.set_title(f"budget {budget}  (n = {f['n']}, {f['n_excluded']} excluded)")
            ax.set_xlabel(RHO_LABEL if n == 1 else r"allocation ratio $\rho$ (MoE share)")  # panels side by side
            ax.set_ylabel(LOSS_LABEL)
        _figure_legend(fig, axes[0])
        sns.despine(fig)
        fig.tight_layout()
    return fig


def _draw_fit(ax, f: dict, color, level: float) -> None:
    """The quadratic with its confidence band; the law chosen by AICc where it is another one (its minimum is the
    fit's rho*); rho* and its interval only where the fit shows an interior optimum, else a note saying so."""
    lo, hi = f["rho_range"]
    grid = np.linspace(lo, hi, 200)
    mean, band_lo, band_hi = stats.quadratic_band(f["params"], f["cov"], f["df_resid"], grid, level)
    ax.plot(grid, mean, color=color, label="quadratic fit")
    ax.fill_between(grid, band_lo, band_hi, color=color, alpha=0.15, linewidth=0,
                    label=f"quadratic fit, {_percent(level)} CI of the mean")
    optimum = f.get("optimum")
    if optimum and optimum["model"] != "quadratic":
        law = optimum["model"]
        params = f["selection"]["candidates"][law]["params"]
        ax.plot(grid, stats.u_predict(law, params, grid), color=color, linestyle="-.",
                label=f"{law} law (lowest AICc)")
    if not (optimum and optimum["interior_shown"]):
        ax.text(0.5, 0.97, "no interior optimum shown", transform=ax.transAxes, ha="center", va="top",
                color="0.3")
        return
    lo_ci, hi_ci = optimum["ci_bootstrap"]  # of minimisers on the sampled range: nothing to clip
    ax.axvline(optimum["estimate"], color="0.3", linestyle="--", linewidth=0.8,
               label=r"$\rho^*$ (minimum of the AICc-chosen law)", gid=RHO_STAR_GID)
    ax.axvspan(lo_ci, hi_ci, color="0.5", alpha=0.15, linewidth=0,
               label=rf"$\rho^*$ {_percent(level)} CI (bootstrap)", gid=RHO_STAR_GID)


def _figure_legend(fig, axes) -> None:
    """One legend above all panels: each label once (a rho* drawn in one panel only still gets its entry)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(entries.values(), entries.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncols=2 if len(axes) == 1 else 3, frameon=False)


def memory_scaling(df: pd.DataFrame, fits: dict, out_dir) -> list[Path]:
    """The memory-scaling figure (:func:`memory_scaling_figure`) as ``memory_scaling.png`` and ``.pdf``."""
    return _saved(memory_scaling_figure(df, fits), out_dir, "memory_scaling")


def memory_scaling_figure(df: pd.DataFrame, fits: dict):
    """Loss vs Engram slots on a log axis, per method: seed means ± s.e., fitted log-linear (solid) and power law
    (dotted) lines, and the no-memory baseline when it was run."""
    f = fits["memory_scaling"]
    methods = f.get("methods", {})
    if not methods:
        return None
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(COLUMN_IN, HEIGHT_IN))
        for color, (name, m) in zip(sns.color_palette("colorblind", len(methods)), methods.items()):
            pts = pd.DataFrame(m["points"])
            ax.errorbar(pts["slots"], pts["mean"], yerr=(pts["sd"] / np.sqrt(pts["n"])).where(pts["n"] > 1),
                        fmt="o", color=color, capsize=1.5, label=f"{name} (n = {m['n']})")
            if m.get("status") == "ok":
                grid = np.geomspace(pts["slots"].min(), pts["slots"].max(), 100)
                a, b = m["log_linear"]["params"]
                ax.plot(grid, a + b * np.log10(grid), color=color)
                la, k = m["power_law"]["params"]
                ax.plot(grid, np.exp(la) * grid ** k, color=color, linestyle=":")
        if f.get("baseline"):
            ax.axhline(f["baseline"]["mean"], color="0.4", linestyle="--", linewidth=0.8, label="no memory (mean)")
        ax.set_xscale("log")
        ax.set_xlabel("Engram slots (table rows)")
        ax.set_ylabel(LOSS_LABEL)
        seeded = any(p["n"] > 1 for m in methods.values() for p in m["points"])
        points = "points: mean ± s.e. over seeds" if seeded else "points: one run each"
        # above the axes: inside, it would sit on the no-memory line, which lies above every memory point
        ax.legend(frameon=False, title=f"{points}\nsolid: log-linear fit, dotted: power law",
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
        sns.despine(fig)
        fig.tight_layout()
    return fig


def placement(df: pd.DataFrame, fits: dict, out_dir) -> list[Path]:
    """The placement figure (:func:`placement_figure`) as ``placement.png`` and ``.pdf``."""
    return _saved(placement_figure(df, fits), out_dir, "placement")


def placement_figure(df: pd.DataFrame, fits: dict):
    """Loss per Engram placement (0-based layer index; splits at the right) with seed t-intervals."""
    f = fits["placement"]
    if not f.get("layers") and not f.get("splits"):
        return None
    items = [*f.get("layers", {}).items(), *f.get("splits", {}).items()]
    runs = _runs(df, "placement")
    labels = [k for k, _ in items]
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(COLUMN_IN, HEIGHT_IN))
        pos = {k: i for i, k in enumerate(labels)}
        lay = placement_layers(runs).map(lambda t: layer_name(t) if t else None)
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(runs))  # seeded: a redrawn figure is the same
        ax.scatter(lay.map(pos) + jitter, runs[LOSS], color="0.6", s=4, linewidth=0)
        for k, s in items:
            yerr = None if s["ci"] is None else [[s["mean"] - s["ci"][0]], [s["ci"][1] - s["mean"]]]
            best = k == str(f.get("best_layer"))
            ax.errorbar(pos[k], s["mean"], yerr=yerr, fmt="D" if "+" in k else "o", capsize=1.5,
                        color=sns.color_palette("colorblind")[3 if best else 0])
        ax.set_xticks(range(len(labels)), labels, rotation=0 if len(labels) < 16 else 90)
        ax.set_xlabel("Engram layer(s), 0-based block index")
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(f"mean and {_percent(fits['level'])} t-interval over seeds; "
                     "lowest single-layer mean in red")
        sns.despine(fig)
        fig.tight_layout()
    return fig


def ablation_label(name: str) -> str:
    """A short human label for an ablation's config key ("no_gate" -> "no gate"); unknown keys lose their
    underscores."""
    return ABLATION_LABELS.get(name, name.replace("_", " "))


def ablation(fits: dict, out_dir) -> list[Path]:
    """The ablation figure (:func:`ablation_figure`) as ``ablation.png`` and ``.pdf``."""
    return _saved(ablation_figure(fits), out_dir, "ablation")


def ablation_figure(fits: dict):
    """Loss change of each switch against the reference, with Welch intervals over seeds where both sides have
    two seeds or more."""
    f = fits["ablation"]
    deltas = f.get("deltas", {})
    if not deltas:
        return None
    rows = sorted(deltas.items(), key=lambda kv: kv[1]["difference"])
    labels = [textwrap.fill(ablation_label(k), ABLATION_LABEL_WIDTH) for k, _ in rows]
    lines = sum(label.count("\n") + 1 for label in labels)
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(COLUMN_IN, 0.6 + 0.16 * lines + 0.06 * len(rows)))
        y = np.arange(len(rows))
        ax.barh(y, [v["difference"] for _, v in rows], color=sns.color_palette("colorblind")[0], height=0.7)
        for i, (_, v) in enumerate(rows):
            if v["ci"] is not None:
                ax.errorbar(v["difference"], i, xerr=[[v["difference"] - v["ci"][0]], [v["ci"][1] - v["difference"]]],
                            color="k", capsize=1.5, linewidth=0.8)
        ax.set_yticks(y, labels)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # largest loss increase at the bottom, as the sort reads
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # fewer, wider ticks: signed 3-decimal labels collide
        ax.axvline(0, color="0.3", linewidth=0.6)
        interval = (f"\nbars: Welch {_percent(fits['level'])} CI over seeds"
                    if any(v["ci"] is not None for _, v in rows) else "\nfewer than two seeds a side: no interval")
        reference = ablation_label(f["reference"])
        ax.set_xlabel(f"validation loss minus {reference} (nats/token){interval}")
        ax.set_ylabel("")
        sns.despine(fig)
        fig.tight_layout()
    return fig


def long_context_table(df: pd.DataFrame) -> pd.DataFrame:
    """(model, task, metric, value, error) of long-context evals, averaged over runs of a model; the error is the
    record's stderr for a lone run, else the standard error across runs. Memory-off evals get their own model."""
    rows = []
    for col in eval_columns(df):
        task, metric, off = split_eval_column(col)
        if not task_is(task, LONG_CONTEXT_PREFIXES):
            continue
        sub = df[["model", col, f"{col}_stderr"]].dropna(subset=[col])
        for model, g in sub.groupby("model"):
            vals = g[col].astype(float)
            err = float(g[f"{col}_stderr"].astype(float).iloc[0]) if len(g) == 1 else _mean_se(vals)[1]
            rows.append({"model": f"{model} (memory off)" if off else str(model), "task": task, "metric": metric,
                         "value": float(vals.mean()), "error": err, "n": len(g)})
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value", "error", "n"])


def long_context(df: pd.DataFrame, out_dir) -> list[Path]:
    """The long-context figure (:func:`long_context_figure`) as ``long_context.png`` and ``.pdf``."""
    return _saved(long_context_figure(df), out_dir, "long_context")


def long_context_figure(df: pd.DataFrame):
    """Grouped bars of long-context eval metrics (tasks named niah*, ruler*, vt*, mq*, needle*) by model."""
    t = long_context_table(df)
    if t.empty:
        return None
    t["label"] = t["task"] + np.where(t.groupby("task")["metric"].transform("nunique") > 1, "\n" + t["metric"], "")
    labels = sorted(t["label"].unique())
    models = sorted(t["model"].unique())
    width = 0.8 / len(models)
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(min(PAGE_IN, max(COLUMN_IN, 0.5 * len(labels) * len(models))), HEIGHT_IN))
        for j, (model, color) in enumerate(zip(models, sns.color_palette("colorblind", len(models)))):
            g = t[t["model"] == model].set_index("label").reindex(labels)
            x = np.arange(len(labels)) + (j - (len(models) - 1) / 2) * width
            ax.bar(x, g["value"], width, yerr=g["error"], color=color, label=model, capsize=1.0,
                   error_kw={"linewidth": 0.6})
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")  # task names are long
        ax.set_ylim(0, 1)  # recall and accuracy: a zero bar reads as zero, not as an empty axis
        ax.set_ylabel("score (0 to 1; bars: ± s.e.)")
        ax.legend(frameon=False, ncols=min(3, len(models)), loc="lower center", bbox_to_anchor=(0.5, 1.0))
        sns.despine(fig)
        fig.tight_layout()
    return fig


def draw_all(df: pd.DataFrame, fits: dict, out_dir) -> dict[str, list[Path]]:
    """Every figure the records support; a figure without data maps to an empty list."""
    return {
        "u_curve": u_curves(df, fits, out_dir),
        "memory_scaling": memory_scaling(df, fits, out_dir),
        "placement": placement(df, fits, out_dir),
        "ablation": ablation(fits, out_dir),
        "long_context": long_context(df, out_dir),
    }
