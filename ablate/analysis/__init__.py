"""Hypothesis engine: collect records -> pair the arms -> test the hypotheses -> write the report.

    collect.py     records (one sweep, several, or a whole results folder) -> one runs table; pairing
    hypotheses.py  conf/hypothesis/*.yaml -> Hypothesis; evaluate() -> per cell group verdicts
    stats.py       paired t-test, TOST, bootstrap CI, d_z, Holm, crossover L*, trend
    summaries.py   descriptive per cell group tables (arms, efficiency) and sequence-length points
    figures.py     PNG figures
    workers.py     the report's two forked helper processes (reading records, drawing figures)
    report.py      report.md, results.csv, verdicts.csv; the `ablate report` command (main)
    callback.py    Hydra callback: the report at the end of every multirun
"""
