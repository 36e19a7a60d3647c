"""``engram-lab sweep`` and ``engram-lab status``."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="plan, launch and see through a sweep spec (grid or Optuna study)")
    p.add_argument("spec", help="sweep spec YAML (see sweeps/specs/)")
    p.add_argument("--dry-run", action="store_true", help="resolve and print the trial table; submit nothing")
    p.add_argument("--executor", choices=("slurm", "local", "debug"), help="override the spec's launch.executor")
    p.add_argument("--retry-failed", action="store_true", help="submit failed trials again (resuming them)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("--no-analysis", action="store_true", help="skip the fits and figures at the end")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.add_argument("--results", default="results", help="folder of records (default: results)")
    p.add_argument("--workdir", default="runs", help="folder of checkpoints, logs and the study (default: runs)")
    p.set_defaults(func=sweep_command)

    s = sub.add_parser("status", help="where each trial of a sweep stands")
    s.add_argument("sweep", help="sweep name (a folder under --results) or its spec YAML")
    s.add_argument("--results", default="results")
    s.add_argument("--workdir", default="runs")
    s.set_defaults(func=status_command)


def sweep_command(args) -> int:
    from sweeps.launch import run_sweep

    outcome = run_sweep(args.spec, args.results, args.workdir, executor=args.executor,
                        retry_failed=args.retry_failed, dry_run=args.dry_run, wait=not args.no_wait,
                        analyse=not args.no_analysis, timeout_s=args.timeout)
    if args.dry_run or args.no_wait:
        return 0
    return 0 if outcome.count("completed") == len(outcome.planned) else 1


def status_command(args) -> int:
    from sweeps.status import sweep_status

    try:
        print(sweep_status(args.sweep, args.results, args.workdir))
    except FileNotFoundError as err:
        print(f"engram-lab status: {err}", file=sys.stderr)
        return 2
    return 0
