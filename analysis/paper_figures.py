"""One entry point that regenerates every fit, table, figure and report under ``results/`` from stored records.

    regenerate("results")        every sweep folder, each analysed on its own
    analyse("results", ["a"])    one analysis of the named sweeps pooled (the command-line stages call this)

Output layout (DESIGN.md, "The flow of data"): ``<out>/{fits.json, table.csv, tables/, figures/, report.md}``
with ``<out>`` = ``results/<sweep>`` for one sweep and ``results/_combined/<a>+<b>`` for several pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from analysis import claims, data, fits as fitting, plotting, probes, report, tables
from engram_lab.records import analysis_dir
from engram_lab.files import write_text_atomic

STEPS = ("fits", "tables", "figures", "report")


def analyse(results: str | Path, sweeps: Iterable[str], steps: Iterable[str] = STEPS,
            report_path: str | Path | None = None, level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> dict[str, list[Path]]:
    """Load the sweeps' records into one table and write the requested outputs; returns the files per step.

    ``fits.json`` is always written, because every other output is drawn from it.
    """
    sweeps = list(sweeps)
    steps = set(steps)
    bad = steps - set(STEPS)
    if bad:
        raise ValueError(f"unknown steps {sorted(bad)}; choose from {STEPS}")
    out_dir = analysis_dir(results, sweeps)
    df = data.load(results, sweeps)
    fits = fitting.fit_all(df, level=level, n_boot=n_boot, seed=seed, sweeps=sweeps)
    written = {"fits": [fitting.save_fits(fits, out_dir / "fits.json")]}
    if "tables" in steps:
        written["tables"] = tables.write_tables(df, fits, out_dir)
    figures = {}
    probe_records = probes.load_probes(results, sweeps)
    if "figures" in steps or "report" in steps:
        figures = {**plotting.draw_all(df, fits, out_dir / "figures"),
                   **probes.draw_all(probe_records, out_dir / "figures")}
        written["figures"] = [p for paths in figures.values() for p in paths]
    if "report" in steps:
        path = Path(report_path) if report_path else out_dir / "report.md"
        text = report.build_report(df, fits, figures, claims.evaluate(fits, df), path, probe_records)
        written["report"] = [write_text_atomic(path, text)]
    return written


def regenerate(results_dir: str | Path = "results", sweeps: Iterable[str] | None = None,
               **kwargs) -> dict[str, dict[str, list[Path]]]:
    """Every output of every sweep folder under ``results_dir`` (or of the named sweeps), each on its own."""
    names = data.find_sweeps(results_dir) if sweeps is None else list(sweeps)
    return {name: analyse(results_dir, [name], **kwargs) for name in names}
