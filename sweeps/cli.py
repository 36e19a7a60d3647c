"""``engram-lab sweep``, ``engram-lab plan`` and ``engram-lab status``."""

from __future__ import annotations

import argparse
import sys

COMPILE = {"false": False, "true": True, "cudagraphs": "cudagraphs"}  # --compile's words as train.compile's values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="plan, launch and see through a sweep spec (grid or Optuna study)")
    p.add_argument("spec", help="sweep spec YAML (see sweeps/specs/)")
    p.add_argument("--dry-run", action="store_true", help="resolve and print the trial table; submit nothing")
    p.add_argument("--executor", choices=("slurm", "local", "debug"), help="override the spec's launch.executor")
    p.add_argument("--retry-failed", action="store_true", help="submit failed trials again (resuming them)")
    p.add_argument("--compile", choices=tuple(COMPILE), help="override every trial's train.compile for this launch "
                   "(how the steps run: run ids, and so finished trials, stay)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="override the spec's launch.max_parallel for this "
                   "launch (jobs at once on the local executor)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("--no-analysis", action="store_true", help="skip the fits and figures at the end")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.add_argument("--results", default="results", help="folder of records (default: results)")
    p.add_argument("--workdir", default="runs", help="folder of checkpoints, logs and the study (default: runs)")
    p.set_defaults(func=sweep_command)

    q = sub.add_parser("plan", help="the trial table of a sweep spec (as sweep --dry-run) and, with --power, how many "
                                     "seeds per grid point locate rho* to +-0.05")
    q.add_argument("spec", help="sweep spec YAML (see sweeps/specs/)")
    q.add_argument("--power", action="store_true",
                   help="simulate the planned rho values with seed noise: rho*'s +- at 1 to 16 seeds per point")
    q.add_argument("--pilot", metavar="SWEEP", help="sweep folder under --results whose seed noise and mean curve the "
                                                    "power estimate uses (default: the spec's own, if it has records)")
    q.add_argument("--noise", type=float, metavar="NATS", help="seed sd of the validation loss (default: the pilot's)")
    q.add_argument("--target", type=float, default=0.05, help="+- on rho* to reach (default: 0.05)")
    q.add_argument("--results", default="results", help="folder of records (default: results)")
    q.set_defaults(func=plan_command)

    s = sub.add_parser("status", help="where each trial of a sweep stands")
    s.add_argument("sweep", help="sweep name (a folder under --results) or its spec YAML")
    s.add_argument("--results", default="results")
    s.add_argument("--workdir", default="runs")
    s.set_defaults(func=status_command)


def sweep_command(args) -> int:
    from sweeps.launch import run_sweep

    try:
        outcome = run_sweep(args.spec, args.results, args.workdir, executor=args.executor,
                            retry_failed=args.retry_failed, dry_run=args.dry_run, wait=not args.no_wait,
                            analyse=not args.no_analysis, timeout_s=args.timeout,
                            compile_=None if args.compile is None else COMPILE[args.compile],
                            max_parallel=args.max_parallel)
    except TimeoutError as err:  # the trials it started go on; the same command again waits for them or resumes them
        print(f"engram-lab sweep: {err}", file=sys.stderr)
        return 1
    if args.dry_run or args.no_wait:
        return 0
    return 0 if outcome.count("completed") == len(outcome.planned) else 1


def plan_command(args) -> int:
    from sweeps.launch import run_sweep
    from sweeps.power import power_report
    from sweeps.spec import load_spec

    outcome = run_sweep(args.spec, args.results, dry_run=True)
    if not (args.power or args.pilot or args.noise is not None):
        return 0
    spec = load_spec(args.spec)
    if spec.is_study:
        print("engram-lab plan: --power needs a grid: an Optuna study picks its points as it runs", file=sys.stderr)
        return 2
    try:
        print(power_report(spec, outcome.planned, args.results, args.pilot, args.noise, args.target))
    except (ValueError, FileNotFoundError) as err:  # no noise to plan with, or a pilot without usable records
        print(f"engram-lab plan: {err}", file=sys.stderr)
        return 2
    return 0


def status_command(args) -> int:
    from engram_lab.records import RecordError
    from sweeps.status import sweep_status

    try:
        print(sweep_status(args.sweep, args.results, args.workdir))
    except (FileNotFoundError, RecordError) as err:  # no plan yet, or one that cannot be read: the message names it
        print(f"engram-lab status: {err}", file=sys.stderr)
        return 2
    return 0
