"""``engram-lab probe``: a thin shell over :func:`eval.probes.run_probes`, then the probe figures from the records.

    engram-lab probe runs/<sweep>/<engram run>/model --against runs/<sweep>/<moe run>/model
    engram-lab probe CKPT --probes gate --text "The capital of the Kingdom of Varn is Port Esk."
    engram-lab probe CKPT --probes memory_off --tasks engram_world_knowledge --limit 200

Records go to ``<results>/<sweep>/probes/<run_id>/<kind>[__vs_<run_id>].json``; the figures are redrawn from every
probe record of the sweep(s) involved, where ``engram-lab figures`` puts them (``<results>/<sweep>/figures``).
"""

from __future__ import annotations

import argparse
import sys


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    """Add ``probe`` to the ``engram-lab`` parser. Defaults left as None are :class:`eval.probes.ProbeSettings`'s
    (not imported here: building the parser must not load torch)."""
    p = subparsers.add_parser("probe", help="run the mechanistic probes on a checkpoint and write probe records",
                              description="LogitLens, CKA against a second checkpoint, Engram gates, the "
                                          "memory-off test (PAPER.md section 6) and in-context copying "
                                          "(induction); records, then figures.")
    p.add_argument("ckpt", help="model folder runs/<sweep>/<run_id>/model (or its run folder)")
    p.add_argument("--against", default=None, help="a second checkpoint (the MoE twin): CKA against it, and its own "
                                                   "probes for comparison")
    p.add_argument("--probes", type=_names, default=None,
                   help="comma-separated subset of logit_lens,cka,gate,memory_off,induction (default: all that "
                        "apply)")
    p.add_argument("--text", default=None, help="text of the gate heatmap, its first 48 tokens (default: a "
                                                "validation document of world facts)")
    p.add_argument("--tokens", type=int, default=None,
                   help="validation tokens for LogitLens, CKA, N-gram gates and memory-off (default: 16384)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the trial's)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default: 8)")
    p.add_argument("--cka-k", type=int, default=None,
                   help="layers averaged by CKA's soft alignment index (default: the paper's 5 of ~30 layers as a "
                        "share of the depth, at least 2)")
    p.add_argument("--tasks", type=_names, default=[],
                   help="lm-eval tasks also run with the memory on and off (eval records are written too)")
    p.add_argument("--limit", type=float, default=None, help="documents per lm-eval task")
    p.add_argument("--label", default=None, help="the checkpoint's name in figures (default: kind and sweep axes)")
    p.add_argument("--against-label", default=None, help="the second checkpoint's name in figures")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: a GPU when there is one)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write the records only")
    p.set_defaults(func=probe_command)


def probe_command(args: argparse.Namespace) -> int:
    from eval.probes import PROBES, ProbeSettings, run_probes

    # lm-eval's convention, as in engram-lab eval: a whole number is documents per task, below 1 a fraction
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    given = {"tokens": args.tokens, "seq_len": args.seq_len, "batch_size": args.batch_size, "cka_k": args.cka_k,
             "task_limit": limit}
    settings = ProbeSettings(tasks=args.tasks, **{k: v for k, v in given.items() if v is not None})
    try:
        run = run_probes(args.ckpt, against=args.against, probes=args.probes or PROBES, text=args.text,
                         results=args.results, device=args.device, settings=settings, label=args.label,
                         against_label=args.against_label)
    except (ValueError, FileNotFoundError) as err:
        print(f"engram-lab probe: {err}", file=sys.stderr)
        return 2
    for rec, path in zip(run.records, run.paths):
        print(f"{rec['kind']} of {rec['label']}: {path}")
        print(summary(rec))
    for note in run.skipped:
        print(f"skipped {note}")
    if args.figures and run.records:
        from engram_lab.records import analysis_dir
        from analysis.probes import draw_all, load_probes

        folders = sorted({rec["sweep"] or "_runs" for rec in run.records})
        figures = draw_all(load_probes(args.results, folders), analysis_dir(args.results, folders) / "figures")
        for path in (p for paths in figures.values() for p in paths if p.suffix == ".png"):
            print(f"figure: {path}")
    return 0


def summary(rec: dict) -> str:
    """A few indented lines with a probe record's numbers."""
    d = rec["data"]
    if rec["kind"] == "logit_lens":
        return "  KL to the final output per layer: " + " ".join(f"{k:.3g}" for k in d["kl"])
    if rec["kind"] == "cka":
        pairs = " ".join(f"{i}->{a:.1f}" for i, a in enumerate(d["soft_alignment"]))
        return f"  layer of {d['rows']} -> matching layer of {d['cols']} (soft alignment): {pairs}"
    if rec["kind"] == "gate":
        top = ", ".join(f"{t['ngram']!r} {t['mean_gate']:.2f}" for t in d["top_ngrams"][:5])
        return f"  {len(d['channels'])} gate channels; top N-grams by mean gate: {top or 'none frequent enough'}"
    if rec["kind"] == "induction":
        return (f"  random tokens repeated once: loss {d['first_loss']:.3f} -> {d['repeat_loss']:.3f} on the repeat "
                f"(uniform {d['uniform_loss']:.3f}), repeat accuracy {d['repeat_accuracy']:.3f}")
    rows = [f"  {r['name']:<24} {r['metric']:<20} on {r['on']:.4f}  off {r['off']:.4f}  retained "
            + ("-" if r["retained"] is None else f"{100 * r['retained']:.0f} %") for r in d["rows"]]
    return "\n".join(rows)
