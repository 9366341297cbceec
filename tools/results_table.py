#!/usr/bin/env python
"""Render the results files as markdown tables: detection (baselines vs SEED), k-NN, linear probe.

    python tools/results_table.py output                            # every results_<kind>.csv in output/
    python tools/results_table.py output/results_detection.csv      # one file
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seed_core.errors import SeedError  # noqa: E402
from seed_core.evaluation.results import render_accuracy_markdown  # noqa: E402
from seed_core.results import find_results, read_rows  # noqa: E402
from seed_det.results import render_markdown  # noqa: E402


def tables(paths) -> str:
    files = [f for p in paths for f in (find_results(p) if os.path.isdir(p) else [p])]
    parts = []
    for path in files:
        kind, rows = read_rows(path)
        table = render_markdown(rows) if kind == "detection" else render_accuracy_markdown(kind, rows)
        parts.append(f"### {kind} ({path})\n\n{table}")
    return "\n".join(parts)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="output root(s) holding results_<kind>.csv, or results files")
    args = p.parse_args()
    try:
        print(tables(args.paths), end="")
    except SeedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
