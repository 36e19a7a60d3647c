"""``engram-lab train``, ``engram-lab budget`` and ``engram-lab corpus``."""

from __future__ import annotations

import argparse
import sys


def _number(text: str) -> float:
    """``12e6``, ``12M``, ``1.5B`` or ``800k`` -> a float."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    text = text.strip().replace("_", "")
    if text and text[-1].lower() in scale:
        return float(text[:-1]) * scale[text[-1].lower()]
    return float(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one trial config and write its run record")
    p.add_argument("config", help="trial YAML (see experiments/configs/)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. model.d_model=512 train.tokens=2e6")
    p.add_argument("--results", default="results", help="folder of run records (default: results)")
    p.add_argument("--workdir", default="runs", help="folder of checkpoints and exported models (default: runs)")
    p.set_defaults(func=train_command)

    b = sub.add_parser("budget", help="print the configs the budget solver gives over a grid of rho")
    b.add_argument("config", help="trial YAML whose model section is the backbone shape")
    b.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    b.add_argument("--total-params", type=_number, required=True, help="P_tot target, e.g. 40M")
    b.add_argument("--active-params", type=_number, default=None, help="P_act target to check, e.g. 4M")
    b.add_argument("--rho", default="0.2,0.4,0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95,1.0",
                   help="comma-separated allocation ratios")
    b.set_defaults(func=budget_command)

    c = sub.add_parser("corpus", help="build a real-English corpus (jsonl.gz) from Debian documentation packages")
    c.add_argument("name", nargs="?", help="corpus name (see --list)")
    c.add_argument("--out", help="folder for <name>.jsonl.gz and <name>.SOURCE.md (keep it out of the repository)")
    c.add_argument("--cache", default=None, help="download cache (default: ~/.cache/engram-lab/corpora)")
    c.add_argument("--list", action="store_true", help="list the corpora, their packages, licences and roles")
    c.set_defaults(func=corpus_command)


def corpus_command(args) -> int:
    from experiments.corpora import CORPORA, CorpusError, build_corpus

    if args.list:
        for c in CORPORA.values():
            print(f"{c.name:<16} {c.role:<10} {', '.join(c.packages):<36} {c.license.split(' (')[0]}")
        return 0
    if not args.name or not args.out:
        print("engram-lab corpus: give NAME and --out DIR, or --list", file=sys.stderr)
        return 2
    try:
        path = build_corpus(args.name, args.out, args.cache)
    except CorpusError as err:
        print(f"engram-lab corpus: {err}", file=sys.stderr)
        return 2
    print(f"{path}\n{path.with_name(f'{args.name}.SOURCE.md')}")
    return 0


def train_command(args) -> int:
    import traceback

    from experiments.config import load_trial
    from experiments.train import ResultsUnwritable, TrialFailed, launch_rank, run_trial

    trial = load_trial(args.config, args.overrides)
    try:
        record = run_trial(trial, results=args.results, workdir=args.workdir)
    except ResultsUnwritable as err:
        print(f"engram-lab train: {err}", file=sys.stderr)
        return 2
    except TrialFailed as err:
        traceback.print_exception(err.__cause__)
        record = err.record
    if launch_rank(trial.train) > 0:  # a data-parallel peer: rank 0 reports the run
        return 0 if record["status"] == "completed" else 1
    m = record["metrics"]
    print(f"run {record['run_id']}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""))
    if record["status"] == "completed":
        acc = record["accounting"]
        print(f"  tokens {acc['tokens']:,}  P_tot {acc['P_tot']:,}  P_act {acc['P_act']:,}  rho {acc['rho']}")
        print(f"  validation loss {m['val_loss']:.4f} nats  (unigram entropy of the validation tokens "
              f"{m['unigram_entropy']:.4f} nats)")
        for cat, loss in sorted(m["val_loss_by_category"].items()):
            print(f"    {cat:<16} {loss:.4f}")
        print(f"  {m['tokens_per_second']:,.0f} tokens/s" + (f", MFU {m['mfu']:.1%}" if m.get("mfu") else ""))
        print(f"  model: {record['checkpoint']}")
    return 0 if record["status"] == "completed" else 1


def budget_table(base, total_params: float, rhos: list[float], active_params: float | None = None) -> list[dict]:
    from engram.budget import rho_grid

    rows = []
    for rho, cfg, c in rho_grid(base, total_params, rhos, active_params):
        rows.append({"rho": rho, "achieved_rho": c.rho, "experts": c.experts, "top_k": c.top_k,
                     "rows_per_head": cfg.engram.rows[0] if cfg.engram else 0, "engram_slots": c.engram_slots,
                     "P_tot": c.P_tot, "P_act": c.P_act, "P_sparse": c.P_sparse,
                     "flops_per_token": c.flops_per_token})
    return rows


def budget_command(args) -> int:
    import dataclasses

    from experiments.config import load_trial, resolve

    trial = load_trial(args.config, args.overrides)
    base = resolve(dataclasses.replace(trial, budget=None)).model
    rows = budget_table(base, args.total_params, [float(r) for r in args.rho.split(",")], args.active_params)
    head = f"{'rho':>5} {'achieved':>8} {'experts':>7} {'rows/head':>9} {'slots':>10} {'P_tot':>13} {'P_act':>12} " \
           f"{'P_sparse':>13} {'FLOPs/token':>12}"
    print(head)
    for r in rows:
        print(f"{r['rho']:>5.2f} {r['achieved_rho']:>8.4f} {r['experts']:>7} {r['rows_per_head']:>9,} "
              f"{r['engram_slots']:>10,} {r['P_tot']:>13,} {r['P_act']:>12,} {r['P_sparse']:>13,} "
              f"{r['flops_per_token']:>12.4g}")
    return 0
