"""analysis: records -> pandas table -> statsmodels fits -> seaborn figures -> tables and a reproduction report.

    data          load run and eval records into one tidy table (one row per run)
    stats         array-level statistics (U-curve optimum with intervals, log-scale laws, Welch)
    fits          the paper's fitted laws from the table, saved as fits.json
    simulate      records drawn from known laws (fitters are proven on these first)
    plotting      one function per paper figure
    tables        run and fit tables as Markdown, CSV and LaTeX
    claims        our fits against paper_claims.yaml: supports / contradicts / cannot tell
    report        the Markdown reproduction report
    paper_figures regenerate(results_dir): every output of every sweep from stored records
    cli           the fit / figures / tables / report subcommands of engram-lab

Importing the package imports nothing heavy; each module imports its own dependencies.
"""
