"""Fitted laws from the run table, one per paper experiment, saved as ``fits.json``.

Which runs feed which fit is decided by the record's ``experiment`` field (engram_lab/records.py):

    u_curve         allocation       val_loss vs achieved rho (accounting.rho), per axes.budget
    memory_scaling  memory_scaling   val_loss vs accounting.engram_slots, per method (axes.method, else the variant)
    placement       placement        val_loss vs axes.layers (single layers, and splits across several)
    ablation        ablation         val_loss of each axes.ablation against the row named "reference"
    text_versions   every experiment runs of one sweep scored on different text (a rebuilt corpus): each version's
                                     loss offsets; u_curve_one_text, the U fitted again with them removed

Only completed runs are fitted; every fit says how many runs of its experiment it left out. Each fit carries the
model formula, n, coefficients with intervals, R² and a plain-language ``verdict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway

from analysis import power, stats
from analysis.data import completed_runs, exclusion_summary
from engram_lab.files import write_atomic

LOSS = "metrics.val_loss"
HELDOUT_LOSS = "metrics.heldout_loss"  # on a second text source never trained on (data.heldout)
SCHEMA = "engram-lab/fits/1"
EXPERIMENTS = {"u_curve": "allocation", "memory_scaling": "memory_scaling", "placement": "placement",
               "ablation": "ablation"}


def fit_all(df: pd.DataFrame, level: float = stats.LEVEL, n_boot: int = 2000, seed: int = 0,
            sweeps: list[str] | None = None) -> dict:
    """Every fit the table supports, plus the run accounting (how many runs, how many left out and why)."""
    versions, one_text = fit_text_versions(df)
    return {
        "schema": SCHEMA,
        "sweeps": sorted(sweeps) if sweeps is not None else sorted({str(s) for s in df["sweep"].unique()}),
        "level": level,
        "runs": exclusion_summary(df),
        "orphan_evals": list(df.attrs.get("orphan_evals", [])),
        "u_curve": fit_u_curve(df, level, n_boot, seed),
        # the same law on the held-out source, where the runs have it: does the optimum carry beyond the training text
        "u_curve_heldout": (fit_u_curve(df, level, n_boot, seed, y=HELDOUT_LOSS)
                            if HELDOUT_LOSS in df and df[HELDOUT_LOSS].notna().any() else None),
        "text_versions": versions,
        # where a sweep's runs were scored on more than one text: the law with each version's offset removed
        "u_curve_one_text": fit_u_curve(one_text, level, n_boot, seed) if one_text is not None else None,
        "memory_scaling": fit_memory_scaling(df, level),
        "placement": fit_placement(df, level),
        "ablation": fit_ablation(df, level),
    }


# --- the text the runs were scored on -------------------------------------------------------------------------------

TEXT_FIELDS = {"text_fingerprint": "text", "tokenizer_fingerprint": "tokenizer",
               "validation_fingerprint": "validation", "validation_tokens_available": "validation tokens"}


def text_version(runs: pd.DataFrame) -> pd.Series | None:
    """The text each run was scored on, named by the fields of ``metrics.data`` that every one of ``runs`` recorded
    (the corpus files' and validation set's fingerprints are newer than the tokenizer's and the validation token
    count), so that records of one text written before and after a field was added still match; None without them."""
    fields = [f for f in TEXT_FIELDS if f"metrics.data.{f}" in runs and runs[f"metrics.data.{f}"].notna().all()]
    if not fields:
        return None
    return runs[[f"metrics.data.{f}" for f in fields]].astype(str).apply(
        lambda row: ", ".join(f"{TEXT_FIELDS[f]} {v[:8]}" for f, v in zip(fields, row)), axis=1)


def fit_text_versions(df: pd.DataFrame) -> tuple[list[dict], pd.DataFrame | None]:
    """Completed runs of one sweep, with the same data settings, scored on different text, and ``df`` on one text.

    The text under ``data.path`` can change between runs of one sweep (a corpus rebuilt from an updated package
    moves documents between the splits and retrains the tokenizer), and then losses are not on one scale. One entry
    per version: its runs, grid points and dates, the points it shares with the version with the most runs (the
    reference; ``shared_points`` None for it) and each loss's offset from the reference as [estimate, se] (least
    squares with a term per grid point, over the points two versions share; None where it shares none). Empty when
    every sweep is one text. The frame is ``df`` with each version's val loss moved onto its reference's scale; None
    where there is nothing to move or an offset is unknown.
    """
    versions, one_text, movable = [], df.copy(), True
    runs = df[df["status"] == "completed"] if "status" in df else df.iloc[:0]
    settings = [c for c in runs.columns if c.startswith("config.data.") and runs[c].notna().any()]
    for _, group in runs.groupby(["sweep", *settings], sort=False, dropna=False):
        text = text_version(group)
        if text is None or text.nunique() < 2:
            continue
        axes = [c for c in group.columns if c.startswith("axes.") and c != "axes.seed" and group[c].notna().any()]
        point = group[axes].astype(str).agg(" ".join, axis=1) if axes else pd.Series("", index=group.index)
        counts = text.value_counts()
        reference = counts.index[0]
        offsets = {m: _version_offsets(group[m], text, point, reference)
                   for m in (LOSS, HELDOUT_LOSS) if m in group and group[m].notna().any()}
        for version, n in counts.items():
            mine = text == version
            created = group.loc[mine, "created"].astype(str) if "created" in group else pd.Series([""])
            versions.append({
                "sweep": str(group["sweep"].iloc[0]), "text": version, "runs": int(n),
                "points": int(point[mine].nunique()), "first_run": created.min()[:10], "last_run": created.max()[:10],
                "shared_points": None if version == reference else
                len(set(point[mine]) & set(point[text == reference])),
                "offsets": {m.split(".")[-1]: None if version == reference else est.get(version)
                            for m, est in offsets.items()}})
            if version != reference:
                shift = offsets.get(LOSS, {}).get(version)
                movable = movable and shift is not None
                if shift is not None:
                    one_text.loc[group.index[mine], LOSS] -= shift[0]
    return versions, one_text if versions and movable else None


def _version_offsets(loss: pd.Series, text: pd.Series, point: pd.Series, reference: str) -> dict:
    """{version: [offset, standard error]} of ``loss`` against ``reference`` with a fixed effect per grid point,
    from the points where two versions share runs; a version without such a point is left out."""
    keep = loss.notna()
    loss, text, point = loss[keep], text[keep], point[keep]
    shared = point.groupby(point).transform(lambda p: text[p.index].nunique() > 1)
    loss, text, point = loss[shared], text[shared], point[shared]
    others = [v for v in text.unique() if v != reference]
    if not others:
        return {}
    design = pd.concat([pd.get_dummies(point, dtype=float), pd.get_dummies(text, dtype=float)[others]], axis=1)
    if len(loss) <= design.shape[1] or np.linalg.matrix_rank(design.to_numpy()) < design.shape[1]:
        return {}
    fit = sm.OLS(loss.to_numpy(dtype=float), design.to_numpy()).fit()
    n_points = design.shape[1] - len(others)
    return {v: [float(fit.params[n_points + i]), float(fit.bse[n_points + i])] for i, v in enumerate(others)}


def save_fits(fits: dict, path: str | Path) -> Path:
    """Write fits atomically as strict JSON (non-finite numbers become null)."""
    return write_atomic(path, jsonable(fits))


def jsonable(obj):
    """Plain JSON types: numpy scalars unwrapped, tuples to lists, NaN and ±inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _experiment(df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, int]:
    rows = df[df["experiment"] == name]
    ok = completed_runs(rows)
    return ok, len(rows) - len(ok)


def _none(experiment: str, n_excluded: int = 0) -> dict:
    return {"status": "no runs", "experiment": experiment, "n": 0, "n_excluded": n_excluded,
            "verdict": f"cannot tell: no completed {experiment} runs"}


def _fmt_ci(ci, digits: int = 4) -> str:
    if ci is None or any(v is None for v in ci):
        return "unbounded"
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def budget_order(value) -> float:
    """Sort key of a budget axis value such as "2e20" (non-numeric names sort last)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


# --- U-curve ------------------------------------------------------------------------------------------------------


def fit_u_curve(df: pd.DataFrame, level: float = stats.LEVEL, n_boot: int = 2000, seed: int = 0,
                y: str = LOSS) -> dict:
    """U-curve fits of the loss ``y`` on achieved rho, one per ``axes.budget`` (see :func:`fit_u_curve_group`);
    completed runs without ``y`` are left out. Where a budget's rho* interval is wider than the target, its
    ``seeds_for_target`` says how many seeds would narrow it (:func:`_seeds_for_target`)."""
    runs, n_excl = _experiment(df, EXPERIMENTS["u_curve"])
    if y != LOSS and not runs.empty:
        runs = runs[runs[y].notna()] if y in runs else runs.iloc[:0]
    if runs.empty:
        return _none("allocation", n_excl)
    budgets = runs["axes.budget"].astype(str) if "axes.budget" in runs else pd.Series("all", index=runs.index)
    out = {"status": "ok", "experiment": "allocation", "n": int(len(runs)), "n_excluded": n_excl, "budgets": {}}
    excluded_by_budget = {}
    if n_excl:
        bad = df[(df["experiment"] == "allocation") & (df["status"] != "completed")]
        bb = bad["axes.budget"].astype(str) if "axes.budget" in bad else pd.Series("all", index=bad.index)
        excluded_by_budget = bb.value_counts().to_dict()
    draws = {}
    for budget in sorted(budgets.unique(), key=budget_order):
        group = runs[budgets == budget]
        fit, draws[budget] = _fit_u_curve_group(group, level, n_boot, seed, excluded_by_budget.get(budget, 0), y)
        if fit["status"] == "ok":
            fit["seeds_for_target"] = _seeds_for_target(fit, n_boot)
            fit["verdict"] = _u_verdict(fit, level)
        out["budgets"][budget] = {**fit, "budget": budget}
    out["stability"] = _rho_star_stability(out["budgets"], draws, level, seed)
    out["verdict"] = "; ".join(f"{b}: {f['verdict']}" for b, f in out["budgets"].items())
    return out


def fit_u_curve_group(runs: pd.DataFrame, level: float = stats.LEVEL, n_boot: int = 2000, seed: int = 0,
                      n_excluded: int = 0) -> dict:
    """The U-curve fit of one budget's completed runs: the quadratic with its intervals, and the law chosen by AICc.

    ``optimum`` (what the verdicts read) is rho* of the law chosen by AICc among a quadratic, a cubic and an
    asymmetric U, with a bootstrap over seeds that chooses the law again in every resample
    (:func:`analysis.stats.u_model_choice`); ``selection`` holds every law's fit and AICc, ``noise_floor`` the
    seed-to-seed spread at each rho.

    The quadratic (``params``, ``rho_star``, ``curvature``, ``interior``, ``loss_gap_rho1``; what the figure
    draws) stays as it was: with at least two seeds at every rho it is WLS on the per-rho means with weights
    n / seed variance (:func:`analysis.stats.seed_variances`), its residual scale still estimated from the fit so
    that lack of fit widens the intervals; otherwise (a rho with one seed) OLS on the runs.

    Measured coverage of the quadratic's 95% rho* intervals (1000 draws of a quadratic law, 10 rho values): one
    seed (OLS) 0.945; two seeds 0.93 (delta) / 0.92 (bootstrap), whatever the shrinkage, the ratio -b/2c being
    strongly nonlinear at that noise; three seeds 0.94; heteroscedastic seed noise 0.97.
    """
    return _fit_u_curve_group(runs, level, n_boot, seed, n_excluded)[0]


def _fit_u_curve_group(runs: pd.DataFrame, level: float, n_boot: int, seed: int, n_excluded: int,
                       y: str = LOSS) -> tuple[dict, np.ndarray | None]:
    """:func:`fit_u_curve_group` and the chosen law's bootstrap draws of rho* (None without a chosen law)."""
    no_rho = runs["accounting.rho"].isna() if "accounting.rho" in runs else pd.Series(True, index=runs.index)
    runs = runs[~no_rho]
    base = {"experiment": "allocation", "x": "accounting.rho", "y": y, "n": int(len(runs)),
            "n_excluded": int(n_excluded + no_rho.sum()), "formula": "val_loss = a + b*rho + c*rho^2"}
    x_run = runs["accounting.rho"].astype(float).to_numpy()
    y_run = runs[y].astype(float).to_numpy()
    points = (pd.DataFrame({"rho": x_run.round(9), "loss": y_run}).groupby("rho")["loss"]
              .agg(n="count", mean="mean", sd="std").reset_index())
    base["n_points"] = int(len(points))
    base["points"] = points.to_dict("records")
    base["noise_floor"] = _noise_floor(points)
    if len(points) < 4:
        return {**base, "status": "insufficient data",
                "verdict": f"cannot tell: {len(points)} distinct rho values, a quadratic with an interval needs 4"
                }, None
    var = stats.seed_variances(points["n"], points["sd"])
    if var is None:  # fewer than two seeds somewhere, or no seed spread at all: the runs themselves are the data
        x, y, w = x_run, y_run, None
        method = "OLS on runs"
    else:
        x, y, w = points["rho"].to_numpy(), points["mean"].to_numpy(), points["n"].to_numpy() / var
        method = "WLS on per-rho means, weights n / seed variance (shrunk to the pooled variance)"
    q = stats.quadratic_optimum(x, y, w, level=level, n_boot=n_boot, seed=seed, ref=1.0)
    out = {**base, "status": "ok", "method": method, "coefficients": q["coefficients"], **q["quality"],
           "params": q["params"], "cov": q["cov"], "rho_range": q["x_range"], "rho_star": q["optimum"],
           "curvature": q["curvature"], "interior": q["interior"], "loss_at_rho_star": q["loss_at_optimum"],
           "loss_gap_rho1": q["gap"], "n": int(len(runs)),
           # residual variance of one run: the fit's scale for OLS on runs; for WLS on means, scale / mean weight x n
           "scale_per_run": q["scale"] if w is None else q["scale"] * float(np.mean(points["n"] / w))}
    out["n_fit_rows"] = int(len(x))
    seeds = runs["seed"].to_numpy() if "seed" in runs and runs["seed"].notna().all() else None
    choice, draws = stats.u_model_choice(x_run, y_run, seeds, level=level, n_boot=n_boot, seed=seed)
    out["selection"] = choice and choice["selection"]
    out["optimum"] = choice and choice["optimum"]
    out["verdict"] = _u_verdict(out, level)
    return out, draws


def _seeds_for_target(f: dict, draws: int) -> dict | None:
    """Where the chosen law's rho* interval is wider than 2 x ``power.TARGET``: how many seeds per point would locate
    rho* to +- the target on these rho values, and on the grid refined around it where these cannot
    (:mod:`analysis.power`), simulated with the chosen law as the true curve and this budget's pooled seed sd as the
    noise. Where every point has two or more runs, also with the mean loss at each rho as the true curve
    (``means``): what the seed bootstrap resamples around. The law smooths the means' bumps away, the means keep
    them, as the interval does; where the counts differ, the bumps' being noise or shape decides which holds. None
    where the interval is that narrow already or there is no law or no seed sd to simulate with."""
    o, noise = f["optimum"], f["noise_floor"]["pooled_sd"]
    if o is None or noise is None:
        return None
    lo, hi = o["ci_bootstrap"]
    if lo is not None and hi is not None and hi - lo <= 2 * power.TARGET:
        return None
    rhos = [pt["rho"] for pt in f["points"]]
    curve = power.chosen_curve(f["selection"], f"the {f['selection']['chosen']} law chosen by AICc")
    needed = power.seeds_needed(rhos, curve, noise, draws=draws)
    out = {"target": power.TARGET, "level": power.LEVEL, "noise": noise, "draws": draws,
           "seeds_now": int(np.median([pt["n"] for pt in f["points"]])), "true_rho_star": needed.rho_star,
           "grid": None if needed.grid is None else {"rhos": needed.rhos, **asdict(needed.grid)},
           "refined": None if needed.refined is None else {"rhos": needed.refined_rhos, **asdict(needed.refined)},
           "means": None}
    if all(pt["n"] >= 2 for pt in f["points"]):
        by_means = power.seeds_needed(rhos, power.mean_curve(f["points"], "the mean loss at each rho"), noise,
                                      draws=draws)
        out["means"] = {"true_rho_star": by_means.rho_star,
                        "grid": None if by_means.grid is None else {"rhos": rhos, **asdict(by_means.grid)}}
    return out


def _noise_floor(points: pd.DataFrame) -> dict:
    """Seed-to-seed sd of val_loss at each rho with two or more runs, their mean, and the pooled sd."""
    seeded = points[points["n"] >= 2]
    return {"per_rho": seeded[["rho", "n", "sd"]].to_dict("records"),
            "mean_sd": float(seeded["sd"].mean()) if len(seeded) else None,
            "pooled_sd": stats.pooled_sd(seeded["n"], seeded["sd"])}


def _u_verdict(f: dict, level: float) -> str:
    o = f["optimum"]
    if o is None:
        return (f"cannot tell: {f['n']} runs at {f['n_points']} rho values are too few to set laws against each "
                f"other (AICc)")
    b = o["bootstrap"]
    lo, hi = f["rho_range"]
    where = (f"rho* = {o['estimate']:.3f} ({o['model']} law, chosen by AICc; {round(level * 100)}% CI "
             f"{_fmt_ci(o['ci_bootstrap'], 3)} from {b['draws']} resamples of {stats.RESAMPLED[b['scheme']]}, "
             f"interior in {b['share_interior']:.0%})")
    noise = f["noise_floor"]["mean_sd"]
    noise = "" if noise is None else f"; seed-to-seed sd {noise:.4f}"
    seeds = f"; {seeds_sentence(f['seeds_for_target'])}" if f.get("seeds_for_target") else ""
    if o["interior_shown"]:
        g = o["loss_gap_rho1"]
        gap = "" if g is None else (f"; pure MoE (rho = 1) costs {g['estimate']:.4f} in loss "
                                    f"(CI {_fmt_ci(g['ci_bootstrap'])})")
        return f"U-shaped: interior optimum at {where}{gap}{noise}{seeds}"
    return (f"no interior optimum shown in [{lo:.2f}, {hi:.2f}]: {where}; the lowest loss is at rho = {lo:.2f} in "
            f"{b['share_at_low']:.0%} of resamples and at rho = {hi:.2f} in {b['share_at_high']:.0%}{noise}{seeds}")


def seeds_sentence(s: dict) -> str:
    """One sentence from :func:`_seeds_for_target`: the seeds per point that locate rho* to the target."""
    to = f"rho* to +-{s['target']:g}"
    if s["grid"] is None:
        return f"{to}: the chosen law has its minimum at a range end, so no number of seeds locates an optimum"
    at = f"(simulated: the chosen law plus seed noise sd {s['noise']:.4f}; {s['seeds_now']} seeds now)"
    grid, refined = s["grid"], s["refined"]
    largest = power.SEED_COUNTS[-1]
    if grid["needed"] is not None:
        law = f"{to} takes {grid['needed']} seeds per point on these {len(grid['rhos'])} rho values {at}"
    elif grid["extrapolated"] is not None:
        law = f"{to} takes about {grid['extrapolated']} seeds per point (extrapolated past {largest}) {at}"
    elif refined is not None and refined["needed"] is not None:
        added = ", ".join(f"{r:.2f}" for r in sorted(set(refined["rhos"]) - set(grid["rhos"])))
        law = (f"{to} takes more than {largest} seeds per point on these rho values, {refined['needed']} with rho "
               f"{added} added around the minimum {at}")
    else:
        law = f"{to} takes more than {largest} seeds per point {at}"
    means = s.get("means")  # absent from fits written before it
    if not means:
        return law
    if means["grid"] is None:
        return f"{law}; the mean loss at each rho has its minimum at a range end"
    m = means["grid"]
    count = (m["needed"] if m["needed"] is not None else
             f"about {m['extrapolated']}" if m["extrapolated"] is not None else f"more than {largest}")
    return f"{law}; with the mean loss at each rho as the true curve (what the interval resamples around), {count}"


def _rho_star_stability(budgets: dict, draws: dict, level: float, seed: int) -> dict | None:
    """rho* of the largest budget minus that of the smallest (each the chosen law's), with a bootstrap interval.

    The budgets' runs are independent, so are their bootstrap draws; one budget's draws are shuffled so that the
    same generator stream does not pair resamples that picked the same seeds.
    """
    fitted = [(b, f) for b, f in budgets.items() if f.get("optimum")]
    if len(fitted) < 2:
        return None
    (b0, f0), (b1, f1) = fitted[0], fitted[-1]
    diff = np.random.default_rng(seed).permutation(draws[b1]) - draws[b0]
    return {"budgets": [b0, b1], "difference": f1["optimum"]["estimate"] - f0["optimum"]["estimate"],
            "se": float(diff.std(ddof=1)), "ci": stats.percentile_interval(diff, 1 - level),
            "interval": "seed-bootstrap percentile interval of the difference of the chosen laws' rho*"}


# --- memory scaling -----------------------------------------------------------------------------------------------


def _method(runs: pd.DataFrame) -> pd.Series:
    for col in ("axes.method", "config.model.engram.variant"):
        if col in runs and runs[col].notna().any():
            return runs[col].fillna(runs["model"]).astype(str)
    return runs["model"].astype(str)


def fit_memory_scaling(df: pd.DataFrame, level: float = stats.LEVEL) -> dict:
    """Power law and log-linear fits of val_loss on Engram slots per method, and method differences.

    Runs without slots (a no-memory backbone) cannot enter a log fit; they are summarised as ``baseline``.
    Method differences come from one pooled two-line fit per method pair against the reference method
    (``engram`` when present): the level difference at the geometric mean of the slot counts and the slope
    difference per decade; the exponent difference from the same fit on log loss.
    """
    runs, n_excl = _experiment(df, EXPERIMENTS["memory_scaling"])
    if runs.empty:
        return _none("memory_scaling", n_excl)
    slots = (runs["accounting.engram_slots"].astype(float) if "accounting.engram_slots" in runs
             else pd.Series(np.nan, index=runs.index))
    has = slots.notna() & (slots > 0)
    method = _method(runs)
    out = {"status": "ok", "experiment": "memory_scaling", "x": "accounting.engram_slots", "y": LOSS,
           "n": int(len(runs)), "n_excluded": n_excl, "methods": {}, "comparisons": {}, "baseline": None}
    if (~has).any():
        out["baseline"] = stats.mean_interval(runs.loc[~has, LOSS].astype(float), level)
    mem = pd.DataFrame({"method": method[has], "slots": slots[has], "loss": runs.loc[has, LOSS].astype(float)})
    for name, g in mem.groupby("method"):
        out["methods"][name] = _memory_method(g, level)
    if mem.empty:
        out["status"] = "insufficient data"
        out["verdict"] = "cannot tell: no runs with Engram slots"
        return out
    s_ref = float(10 ** np.log10(mem["slots"]).mean())
    out["slots_reference"] = s_ref
    names = sorted(out["methods"])
    ref = "engram" if "engram" in names else names[0]
    for other in names:
        pair = mem[mem["method"].isin([ref, other])]
        if other == ref or pair.groupby("method")["slots"].nunique().min() < 2 or len(pair) < 5:
            continue
        second = (pair["method"] == other).to_numpy()
        lin = stats.two_group_lines(np.log10(pair["slots"] / s_ref), pair["loss"], second, level)
        log = stats.two_group_lines(np.log(pair["slots"]), np.log(pair["loss"]), second, level)
        sd = log["slope_difference"]
        alpha_diff = {"estimate": -sd["estimate"], "se": sd["se"], "ci": [-sd["ci"][1], -sd["ci"][0]], "p": sd["p"]}
        lv = lin["level_difference"]
        out["comparisons"][f"{other} - {ref}"] = {
            "formula": "val_loss = a + b*x + d*(a2 + b2*x), x = log10(slots / slots_reference), d = 1 for " + other,
            "level_difference_at_reference": lv, "slope_difference_per_decade": lin["slope_difference"],
            "alpha_difference": alpha_diff, "n": int(len(pair)),
            "verdict": (f"{other} minus {ref} at {s_ref:.3g} slots: {lv['estimate']:+.4f} "
                        f"(CI {_fmt_ci(lv['ci'])}); exponent difference {alpha_diff['estimate']:+.4f} "
                        f"(CI {_fmt_ci(alpha_diff['ci'])})")}
    out["verdict"] = "; ".join(f"{m}: {f['verdict']}" for m, f in out["methods"].items())
    return out


def _memory_method(g: pd.DataFrame, level: float) -> dict:
    points = g.groupby("slots")["loss"].agg(n="count", mean="mean", sd="std").reset_index()
    base = {"n": int(len(g)), "n_slots": int(len(points)), "points": points.to_dict("records")}
    if len(points) < 2 or len(g) < 3:
        return {**base, "status": "insufficient data",
                "verdict": f"cannot tell: {len(points)} slot counts and {len(g)} runs"}
    pl = stats.power_law(g["slots"], g["loss"], level)
    ll = stats.log_linear(g["slots"], g["loss"], level)
    b, alpha = ll["coefficients"]["b"], pl["coefficients"]["alpha"]
    if b["ci"][1] < 0:
        trend = f"loss falls by {-b['estimate']:.4f} per decade of slots (CI {_fmt_ci(b['ci'])})"
    elif b["ci"][0] > 0:
        trend = f"loss rises by {b['estimate']:.4f} per decade of slots (CI {_fmt_ci(b['ci'])})"
    else:
        trend = f"no detectable trend: slope {b['estimate']:+.4f} per decade (CI {_fmt_ci(b['ci'])})"
    best = "log_linear" if ll["quality"]["aic_loss_scale"] <= pl["quality"]["aic_loss_scale"] else "power_law"
    return {**base, "status": "ok", "power_law": pl, "log_linear": ll, "preferred_by_aic": best,
            "verdict": f"{trend}; power-law exponent alpha = {alpha['estimate']:.4f} (CI {_fmt_ci(alpha['ci'])}); "
                       f"R² {ll['quality']['r2']:.2f} (log-linear), {pl['quality']['r2']:.2f} (log-log)"}


# --- placement ----------------------------------------------------------------------------------------------------


def placement_layers(runs: pd.DataFrame) -> pd.Series:
    """Each run's Engram layers as a tuple: axes.layers, else config.model.engram.layers (None when neither)."""
    col = runs["axes.layers"] if "axes.layers" in runs else pd.Series(None, index=runs.index, dtype=object)
    if "config.model.engram.layers" in runs:
        col = col.where(col.notna(), runs["config.model.engram.layers"])
    return col.map(lambda v: tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else None)


def layer_name(layers: tuple) -> str:
    """A placement as a label: (1,) -> "1", (1, 5) -> "1+5" (0-based block indices, as in the config)."""
    return "+".join(str(i) for i in layers)


def fit_placement(df: pd.DataFrame, level: float = stats.LEVEL) -> dict:
    """Loss per single Engram layer with seed t-intervals, the best layer against the rest, depth trend, splits.

    The best layer is chosen from these same data, so its comparisons are post hoc: the p-values against it are
    Holm-adjusted across the other layers, and a Welch one-way ANOVA tests whether any layer differs at all.
    """
    runs, n_excl = _experiment(df, EXPERIMENTS["placement"])
    if runs.empty:
        return _none("placement", n_excl)
    layers = placement_layers(runs)
    n_excl += int(layers.isna().sum())
    runs, layers = runs[layers.notna()], layers[layers.notna()]
    loss = runs[LOSS].astype(float)
    out = {"status": "ok", "experiment": "placement", "y": LOSS, "n": int(len(runs)), "n_excluded": n_excl,
           "formula": "mean val_loss per placement with a t-interval over seeds; Welch tests against the best "
                      "single layer", "index_base": 0, "layers": {}, "splits": {}}
    for lay in sorted(layers.unique(), key=lambda t: (len(t), t)):
        summary = {**stats.mean_interval(loss[layers.map(lambda t: t == lay)], level), "layers": list(lay)}
        (out["layers"] if len(lay) == 1 else out["splits"])[layer_name(lay)] = summary
    singles = out["layers"]
    if not singles:
        out.update(status="insufficient data", verdict="cannot tell: no single-layer runs")
        return out
    best = min(singles, key=lambda k: singles[k]["mean"])
    b = singles[best]
    out["best_layer"] = int(best)
    comps = {k: stats.welch(v["mean"], v["sd"], v["n"], b["mean"], b["sd"], b["n"], level)
             for k, v in singles.items() if k != best}
    testable = [k for k, v in comps.items() if v["p"] is not None]
    if testable:
        adj = multipletests([comps[k]["p"] for k in testable], method="holm")[1]
        for k, p in zip(testable, adj):
            comps[k]["p_holm"] = float(p)
    out["versus_best"] = comps
    groups = [loss[layers.map(lambda t: t == (int(k),))].to_numpy() for k in singles]
    if len(groups) >= 2 and all(len(gr) >= 2 and gr.std() > 0 for gr in groups):
        a = anova_oneway(groups, use_var="unequal")
        out["anova"] = {"test": "Welch one-way ANOVA over single layers", "statistic": float(a.statistic),
                        "df": [float(a.df_num), float(a.df_denom)], "p": float(a.pvalue)}
    single_mask = layers.map(len) == 1
    depth = layers[single_mask].map(lambda t: t[0]).astype(float)
    if depth.nunique() >= 3:
        res = stats.poly_fit(depth, loss[single_mask], 1)
        out["depth_trend"] = {"formula": "val_loss = a + b*layer (single layers)",
                              "slope_per_layer": stats.coefficients(res, ["a", "b"], level)["b"],
                              **stats.fit_quality(res)}
    out["splits_versus_best"] = {k: stats.welch(v["mean"], v["sd"], v["n"], b["mean"], b["sd"], b["n"], level)
                                 for k, v in out["splits"].items()}
    out["verdict"] = _placement_verdict(out)
    return out


def _placement_verdict(f: dict) -> str:
    comps = f["versus_best"]
    better = [k for k, v in comps.items() if v.get("p_holm") is not None and v["p_holm"] < 0.05 and v["difference"] > 0]
    b = f["layers"][str(f["best_layer"])]
    text = (f"best single layer {f['best_layer']} (0-based; mean {b['mean']:.4f}, n = {b['n']}); "
            f"significantly better than {len(better)} of {len(comps)} other layers (Welch, Holm-adjusted)")
    if "anova" in f:
        text += f"; Welch ANOVA p = {f['anova']['p']:.2g}"
    if "depth_trend" in f:
        s = f["depth_trend"]["slope_per_layer"]
        text += f"; depth trend {s['estimate']:+.4f} per layer (CI {_fmt_ci(s['ci'])})"
    for k, v in f["splits_versus_best"].items():
        text += f"; split {k} minus best single: {v['difference']:+.4f} (CI {_fmt_ci(v['ci'])})"
    return text


# --- ablations ----------------------------------------------------------------------------------------------------


def fit_ablation(df: pd.DataFrame, level: float = stats.LEVEL, reference: str = "reference") -> dict:
    """Each switch's loss change against the reference row (Welch over seeds; Holm-adjusted p across switches)."""
    runs, n_excl = _experiment(df, EXPERIMENTS["ablation"])
    if runs.empty:
        return _none("ablation", n_excl)
    if "axes.ablation" not in runs:
        return {"status": "insufficient data", "experiment": "ablation", "n": int(len(runs)), "n_excluded": n_excl,
                "verdict": "cannot tell: the ablation runs carry no axes.ablation name"}
    name = runs["axes.ablation"].astype(str)
    loss = runs[LOSS].astype(float)
    summary = {k: stats.mean_interval(loss[name == k], level) for k in sorted(name.unique())}
    out = {"status": "ok", "experiment": "ablation", "y": LOSS, "reference": reference, "n": int(len(runs)),
           "n_excluded": n_excl, "summary": summary, "deltas": {},
           "formula": "delta = mean(val_loss | switch) - mean(val_loss | reference), Welch interval over seeds"}
    if reference not in summary:
        out.update(status="no reference", verdict=f"cannot tell: no completed run named {reference!r}")
        return out
    r = summary[reference]
    for k, s in summary.items():
        if k != reference:
            out["deltas"][k] = stats.welch(s["mean"], s["sd"], s["n"], r["mean"], r["sd"], r["n"], level)
    testable = [k for k, v in out["deltas"].items() if v["p"] is not None]
    if testable:
        for k, p in zip(testable, multipletests([out["deltas"][k]["p"] for k in testable], method="holm")[1]):
            out["deltas"][k]["p_holm"] = float(p)
    for k, d in out["deltas"].items():
        d["verdict"] = _delta_verdict(d)
    out["verdict"] = "; ".join(f"{k}: {d['verdict']}" for k, d in
                               sorted(out["deltas"].items(), key=lambda kv: -kv[1]["difference"]))
    return out


def _delta_verdict(d: dict) -> str:
    if d["ci"] is None:
        return f"{d['difference']:+.4f}, cannot tell (fewer than two seeds on a side)"
    lo, hi = d["ci"]
    what = "hurts" if lo > 0 else "helps" if hi < 0 else "no detectable change"
    return f"{what}: {d['difference']:+.4f} (CI {_fmt_ci(d['ci'])}, Holm p = {d.get('p_holm', d['p']):.2g})"


def verdicts(fits: dict) -> list[str]:
    """One line per fit: its name and verdict (for the command line)."""
    lines = [f"runs: {fits['runs']['completed']} completed, {fits['runs']['excluded']} excluded "
             f"{fits['runs']['by_status']}"]
    for key in EXPERIMENTS:
        lines.append(f"{key}: {fits[key]['verdict']}")
    return lines
