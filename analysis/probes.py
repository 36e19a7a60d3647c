"""Probe records -> the mechanistic figures of PAPER.md section 6, drawn only from the records (eval/probes.py writes
them; engram_lab/records.py defines them). Probes are optional: a sweep without a probes folder simply has none.

    logit_lens    KL to the final output per layer, one line per model (the paper's LogitLens figure)
    cka           per model pair: CKA heatmap with the matched layers over it, and the layer-matching curve
    gates         per model: the gate of every token of one text, rendered as the text itself (Figure 7)
    gate_ngrams   per model: the N-grams with the highest mean gate over the validation tokens
    memory_off    retained share of each score with the memory off, per category and task (Figure 6)

Each function returns the files it wrote (a PNG and a PDF per figure) or an empty list when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.plotting import COLUMN_IN, HEIGHT_IN, PAGE_IN, save, style  # sets the Agg backend before any figure
from engram_lab.records import read_probe_record

GATE_CMAP = "Reds"
DARK = 0.6  # gate values whose background is dark enough for white text
TEXT_WIDTH = 72  # characters per line of the gate figure's text


def load_probes(results: str | Path, sweeps: Iterable[str]) -> list[dict]:
    """Every probe record of ``sweeps`` (sweep folder names), in path order; none when a sweep has no probes."""
    return [read_probe_record(path) for sweep in sweeps
            for path in sorted((Path(results) / sweep / "probes").rglob("*.json"))]


def _legend_names(recs: list[dict]) -> list[str]:
    """Each record's label, with its run id where two runs share a label (two seeds of one setting)."""
    labels = [r["label"] for r in recs]
    return [f"{r['label']} [{r['run_id']}]" if labels.count(r["label"]) > 1 else r["label"] for r in recs]


def logit_lens(probes: list[dict], out_dir) -> list[Path]:
    """KL(final output || layer read through the final norm and head) per layer, one line per model."""
    recs = [p for p in probes if p["kind"] == "logit_lens"]
    if not recs:
        return []
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(COLUMN_IN, HEIGHT_IN))
        for rec, name, color in zip(recs, _legend_names(recs), sns.color_palette("colorblind", len(recs))):
            ax.plot(rec["data"]["layers"], rec["data"]["kl"], marker="o", color=color, label=name)
        ax.set_xlabel("layer (0: embedding, i: after block i-1)")
        ax.set_ylabel("KL to the final output (nats)")
        ax.legend(frameon=False)
        sns.despine(fig)
        fig.tight_layout()
        return save(fig, out_dir, "logit_lens")


def cka(probes: list[dict], out_dir) -> list[Path]:
    """Per CKA record: the heatmap (layers of the record's model as rows, of the other as columns) with the best
    match and the soft alignment index a_j over it, and beside it the matching curve against the diagonal."""
    paths = []
    for rec in (p for p in probes if p["kind"] == "cka"):
        d = rec["data"]
        m = np.asarray(d["matrix"], float)
        rows = np.arange(len(m))
        with plt.rc_context(style()):
            fig, (ax, curve) = plt.subplots(1, 2, figsize=(PAGE_IN, 0.5 * PAGE_IN), width_ratios=(1.25, 1))
            sns.heatmap(m, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True, cbar_kws={"label": "linear CKA"})
            ax.invert_yaxis()  # layer 0 at the bottom, so a shift above the diagonal reads as on the curve
            ax.plot(np.asarray(d["best_match"]) + 0.5, rows + 0.5, "x", color="w", label="best match")
            ax.plot(np.asarray(d["soft_alignment"]) + 0.5, rows + 0.5, color="w", marker="o", markersize=2,
                    label=f"soft alignment (top {d['k']})")
            ax.set_xlabel(f"layer of {d['cols']}")
            ax.set_ylabel(f"layer of {d['rows']}")
            ax.legend(frameon=False, loc="upper left", labelcolor="w")
            top = max(m.shape) - 1
            curve.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=0.6, label="same depth")
            curve.plot(rows, d["soft_alignment"], marker="o", label="soft alignment")
            curve.plot(rows, d["best_match"], "x", color="k", label="best match")
            curve.set_xlabel(f"layer of {d['rows']}")
            curve.set_ylabel(f"matching layer of {d['cols']}")
            curve.legend(frameon=False)
            sns.despine(ax=curve)
            fig.tight_layout()
            paths += save(fig, out_dir, f"cka_{rec['run_id']}_vs_{rec['against']}")
    return paths


def _text_lines(tokens: list[str], width: int) -> list[list[tuple[int, int, str]]]:
    """Tokens laid out as text: lines of (token index, column, shown text), wrapped at ``width`` characters and after
    each newline (shown as a return sign, so that the token stays visible)."""
    lines, line, column = [], [], 0
    for i, token in enumerate(tokens):
        shown = token.replace("\n", "\u21b5").replace("\t", " ")
        if line and column + len(shown) > width:
            lines.append(line)
            line, column = [], 0
        line.append((i, column, shown))
        column += len(shown)
        if "\n" in token:
            lines.append(line)
            line, column = [], 0
    return lines + ([line] if line else [])


def gates(probes: list[dict], out_dir) -> list[Path]:
    """Per gate record: its text once per channel (Engram layer x branch), each token on a background whose colour is
    its gate alpha, as in the paper's Figure 7."""
    paths = []
    for rec in (p for p in probes if p["kind"] == "gate"):
        d = rec["data"]
        g = np.asarray(d["gates"], float)
        lines = _text_lines(d["tokens"], TEXT_WIDTH)
        width = max(TEXT_WIDTH, max(col + len(s) for line in lines for _, col, s in line))
        block = len(lines) + 1.5  # each channel: a title line, its text, a gap
        cmap = plt.get_cmap(GATE_CMAP)
        with plt.rc_context(style()):
            fig = plt.figure(figsize=(PAGE_IN, 0.4 + 0.17 * block * len(g)))
            ax = fig.add_axes((0.0, 0.0, 0.9, 1.0))
            # one character cell is PAGE_IN * 0.9 / width inches wide; a monospace glyph is ~0.6 em wide
            size = PAGE_IN * 0.9 / width * 72 / 0.6
            for c, (name, values) in enumerate(zip(d["channels"], g)):
                top = c * block
                ax.text(0, top + 0.5, name, fontsize=7, fontweight="bold", va="center")
                for row, line in enumerate(lines, start=1):
                    for i, column, shown in line:
                        ax.add_patch(plt.Rectangle((column, top + row), len(shown), 1, color=cmap(values[i]),
                                                   linewidth=0))
                        ax.text(column, top + row + 0.5, shown, fontsize=size, family="monospace", va="center",
                                color="w" if values[i] > DARK else "k")
            ax.set_xlim(0, width)
            ax.set_ylim(block * len(g), 0)
            ax.axis("off")
            bar = fig.add_axes((0.92, 0.1, 0.015, 0.8))
            fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), cmap), cax=bar, label=r"gate $\alpha_t$")
            fig.suptitle(rec["label"], fontsize=8, y=1.02)
            paths += save(fig, out_dir, f"gates_{rec['run_id']}")
    return paths


def gate_ngrams(probes: list[dict], out_dir) -> list[Path]:
    """Per gate record: the N-grams with the highest mean gate over the validation tokens, with their counts."""
    paths = []
    for rec in (p for p in probes if p["kind"] == "gate" and p["data"]["top_ngrams"]):
        top = rec["data"]["top_ngrams"]
        names = [f"{t['ngram']!r} ({t['count']})" for t in top]
        with plt.rc_context(style()):
            fig, ax = plt.subplots(figsize=(COLUMN_IN, 0.6 + 0.16 * len(top)))
            ax.barh(range(len(top)), [t["mean_gate"] for t in top], color=sns.color_palette("colorblind")[3])
            ax.set_yticks(range(len(top)), names, family="monospace")
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_xlabel(r"mean gate $\alpha$ at the N-gram's last token (count)")
            ax.set_title(rec["label"])
            sns.despine(fig)
            fig.tight_layout()
            paths += save(fig, out_dir, f"gate_ngrams_{rec['run_id']}")
    return paths


GROUP_ORDER = {"kind": 0, "category": 1, "task": 2}
KIND_ORDER = {"static": 0, "dynamic": 1}


def memory_off_table(probes: list[dict]) -> pd.DataFrame:
    """(model, name, group, kind, retained) of every memory-off row with a score to retain, in the figure's order:
    the two halves, then categories (static first), then lm-eval tasks. Task rows name their metric."""
    recs = [p for p in probes if p["kind"] == "memory_off"]
    rows = []
    for rec, model in zip(recs, _legend_names(recs)):
        for r in rec["data"]["rows"]:
            if r["retained"] is None:
                continue
            name = f"{r['name']} ({r['metric']})" if r["group"] == "task" else r["name"]
            rows.append({"model": model, "name": name, "group": r["group"], "kind": r["kind"],
                         "retained": r["retained"],
                         "order": (GROUP_ORDER.get(r["group"], 3), KIND_ORDER.get(r["kind"], 2), name)})
    table = pd.DataFrame(rows, columns=["model", "name", "group", "kind", "retained", "order"])
    return table.sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)


def memory_off(probes: list[dict], out_dir) -> list[Path]:
    """Retained share (memory off / on) of next-token accuracy per half and category of the validation split, and
    of each lm-eval metric, grouped bars per model."""
    t = memory_off_table(probes)
    if t.empty:
        return []
    names = list(dict.fromkeys(t["name"]))
    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(min(PAGE_IN, max(COLUMN_IN, 0.35 * len(names) + 1)), HEIGHT_IN))
        sns.barplot(data=t.assign(retained=100 * t["retained"]), x="name", y="retained", hue="model", order=names,
                    ax=ax, palette="colorblind", errorbar=None)
        ax.axhline(100, color="0.3", linewidth=0.6, linestyle="--")
        ax.set_xlabel("")
        ax.set_ylabel("retained with memory off (%)")
        ax.tick_params(axis="x", rotation=60)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.legend(frameon=False)
        sns.despine(fig)
        fig.tight_layout()
        return save(fig, out_dir, "memory_off")


def draw_all(probes: list[dict], out_dir) -> dict[str, list[Path]]:
    """Every probe figure the records support; a figure without records maps to an empty list."""
    return {"logit_lens": logit_lens(probes, out_dir), "cka": cka(probes, out_dir), "gates": gates(probes, out_dir),
            "gate_ngrams": gate_ngrams(probes, out_dir), "memory_off": memory_off(probes, out_dir)}


def summary_markdown(probes: list[dict], top: int = 5) -> str:
    """The probes' numbers for the report: LogitLens KL per layer, CKA's layer matching, the top gated N-grams, the
    in-context copying losses and the retained shares with memory off; a line saying there are none otherwise."""
    if not probes:
        return "No probe records (`engram-lab probe CKPT [--against CKPT]` writes them).\n"
    parts = []
    lens = [p for p in probes if p["kind"] == "logit_lens"]
    if lens:
        width = max(len(r["data"]["kl"]) for r in lens)
        parts += ["**LogitLens**: KL(final output || layer), nats; layer 0 is the embedding.\n",
                  "| model | " + " | ".join(str(i) for i in range(width)) + " |",
                  "|---|" + "---|" * width]
        parts += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["data"]["kl"]) + " |"
                  for r, name in zip(lens, _legend_names(lens))]
        parts.append("")
    for r in (p for p in probes if p["kind"] == "cka"):
        d = r["data"]
        parts += [f"**CKA** of {d['rows']} against {d['cols']} ({d['n_tokens']} tokens): for each layer, the best "
                  f"matching layer and the soft alignment index (top {d['k']}).\n",
                  "| layer | best match | soft alignment |", "|---|---|---|"]
        parts += [f"| {i} | {b} | {a:.2f} |" for i, (b, a) in enumerate(zip(d["best_match"], d["soft_alignment"]))]
        parts.append("")
    for r in (p for p in probes if p["kind"] == "gate"):
        grams = r["data"]["top_ngrams"][:top]
        parts += [f"**Top gated N-grams** of {r['label']} ({r['data']['corpus_tokens']} tokens):\n",
                  "| N-gram | mean gate | count |", "|---|---|---|"]
        parts += [f"| `{g['ngram']!r}` | {g['mean_gate']:.3f} | {g['count']} |" for g in grams]
        parts.append("")
    copying = [p for p in probes if p["kind"] == "induction"]
    if copying:
        parts += ["**In-context copying** (induction): next-token loss on random tokens and on their repeat, nats; "
                  "a model that copies from its context predicts the repeat.\n",
                  "| model | first copy | repeat | uniform | repeat accuracy |", "|---|---|---|---|---|"]
        parts += [f"| {name} | {r['data']['first_loss']:.3f} | {r['data']['repeat_loss']:.3f} | "
                  f"{r['data']['uniform_loss']:.3f} | {r['data']['repeat_accuracy']:.3f} |"
                  for r, name in zip(copying, _legend_names(copying))]
        parts.append("")
    table = memory_off_table(probes)
    if not table.empty:
        parts += ["**Memory off**: share of each score retained with the Engram output suppressed.\n",
                  "| model | score | retained |", "|---|---|---|"]
        parts += [f"| {row.model} | {row.name} | {100 * row.retained:.0f}% |" for row in table.itertuples()]
        parts.append("")
    return "\n".join(parts)
