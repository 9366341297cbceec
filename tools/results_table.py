#!/usr/bin/env python
"""Render the results files as markdown tables: detection (baselines vs SEED), k-NN, linear probe.

    python tools/results_table.py output                            # every results_<kind>.csv in output/
    python tools/results_table.py output/results_detection.csv      # one file

Installed as `seed-results-table`.
"""
import os
import sys

from seed_core.evaluation.results import render_accuracy_markdown
from seed_core.results import find_results, read_rows
from seed_det.results import render_markdown
from tools import cli


def tables(paths) -> str:
    files = [f for p in paths for f in (find_results(p) if os.path.isdir(p) else [p])]
    parts = []
    for path in files:
        kind, rows = read_rows(path)
        table = render_markdown(rows) if kind == "detection" else render_accuracy_markdown(kind, rows)
        parts.append(f"### {kind} ({path})\n\n{table}")
    return "\n".join(parts)


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    p.add_argument("paths", nargs="+", help="output root(s) holding results_<kind>.csv, or results files")
    print(tables(p.parse_args(argv).paths), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
