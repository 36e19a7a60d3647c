"""``engram-lab fit | figures | tables | report``: thin shells over :mod:`analysis.paper_figures`.

The sweeps named on one command line are pooled into one table and one analysis (outputs in ``results/<sweep>``
for one sweep, ``results/_combined/<a>+<b>`` for several); ``figures`` with no sweep regenerates every sweep
folder on its own. Heavy imports (pandas, statsmodels, seaborn) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys


def register(subparsers) -> None:
    """Add the analysis subcommands to the ``engram-lab`` parser."""
    specs = (
        ("fit", _fit, "fit the laws of the sweeps' records and write fits.json", "+"),
        ("figures", _figures, "draw the paper's figures (every sweep under --results when none is named)", "*"),
        ("tables", _tables, "write the run and fit tables (table.csv, tables/*.md|csv|tex)", "+"),
        ("report", _report, "write the reproduction report (with fits, tables and figures)", "+"),
    )
    for name, handler, help_text, nargs in specs:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("sweeps", nargs=nargs, metavar="SWEEP", help="sweep folder name(s) under --results")
        p.add_argument("--results", default="results", help="results folder (default: results)")
        p.add_argument("--level", type=float, default=0.95, help="two-sided interval level (default: 0.95)")
        p.add_argument("--n-boot", type=int, default=2000, help="parametric bootstrap draws (default: 2000)")
        if name == "report":
            p.add_argument("--out", default=None, help="report file (default: <results>/<sweep>/report.md)")
        p.set_defaults(func=handler)


def _reports_bad_input(handler):
    """A missing sweep folder or a malformed record ends the command with its message (naming the file), rc 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from engram_lab.records import RecordError

        try:
            return handler(args)
        except (RecordError, FileNotFoundError) as err:
            print(f"engram-lab {args.command}: {err}", file=sys.stderr)
            return 2

    return run


def _options(args: argparse.Namespace) -> dict:
    return {"level": args.level, "n_boot": args.n_boot}


def _print(written: dict) -> None:
    for step, paths in written.items():
        for p in paths:
            print(f"{step}: {p}")


@_reports_bad_input
def _fit(args: argparse.Namespace) -> int:
    from analysis import fits
    from analysis.paper_figures import analyse

    written = analyse(args.results, args.sweeps, steps=("fits",), **_options(args))
    _print(written)
    with open(written["fits"][0]) as f:
        for line in fits.verdicts(json.load(f)):
            print(line)
    return 0


@_reports_bad_input
def _figures(args: argparse.Namespace) -> int:
    from analysis.data import find_sweeps
    from analysis.paper_figures import analyse, regenerate

    if args.sweeps:
        _print(analyse(args.results, args.sweeps, steps=("figures",), **_options(args)))
        return 0
    if not find_sweeps(args.results):
        print(f"engram-lab figures: no sweep folders under {args.results}", file=sys.stderr)
        return 1
    for written in regenerate(args.results, steps=("figures",), **_options(args)).values():
        _print(written)
    return 0


@_reports_bad_input
def _tables(args: argparse.Namespace) -> int:
    from analysis.paper_figures import analyse

    _print(analyse(args.results, args.sweeps, steps=("tables",), **_options(args)))
    return 0


@_reports_bad_input
def _report(args: argparse.Namespace) -> int:
    from analysis.paper_figures import analyse

    _print(analyse(args.results, args.sweeps, report_path=args.out, **_options(args)))
    return 0
