#!/usr/bin/env python
"""Render the results files as markdown tables: detection (baselines vs SEED), k-NN, linear probe.

    python tools/results_table.py output                            # every results_<kind>.csv in output/
    python tools/results_table.py output/results_detection.csv      # one file

A file that is not a results file of this project, or one with damaged lines, is reported in one line
on stderr; the tables of the good files (and the good rows of a damaged one) are printed all the same.
Exit code 2 when no table could be printed.

Installed as `seed-results-table`.
"""
import os
import sys

from seed_core.evaluation.results import render_accuracy_markdown
from seed_core.results import ResultsError, find_results, inspect_results_file
from seed_det.results import render_markdown
from tools import cli


def tables(paths, report=lambda line: None) -> str:
    """The markdown tables of the results files under `paths`; `report(line)` is called once per file
    that is not ours (left out) or that has damaged lines (its good rows are used)."""
    files = [f for p in paths for f in (find_results(p) if os.path.isdir(p) else [p])]
    parts = []
    for path in files:
        if not os.path.isfile(path):
            raise ResultsError(f"results file not found: {path}. tools/train_net.py, tools/eval_knn.py and "
                               "tools/eval_linear.py write results_<kind>.csv under their output root.")
        found = inspect_results_file(path)
        if found.kind is None:
            report(f"{path} is not a results file of this project ({found.problem or 'it is empty'}): left out")
            continue
        if found.damaged:
            report(f"{path} has {found.damage_summary()}: its {len(found.rows)} good rows are shown; the next "
                   "run that records a result moves it aside and keeps them")
        kind, rows = found.kind, found.rows
        table = render_markdown(rows) if kind == "detection" else render_accuracy_markdown(kind, rows)
        parts.append(f"### {kind} ({path})\n\n{table}")
    return "\n".join(parts)


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    p.add_argument("paths", nargs="+", help="output root(s) holding results_<kind>.csv, or results files")
    bad: list = []
    out = tables(p.parse_args(argv).paths, bad.append)
    if not out:
        for line in bad:
            cli.error(line)
        return cli.USAGE_ERROR
    for line in bad:
        print(f"warning: {line}", file=sys.stderr)
    print(out, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
