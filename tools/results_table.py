#!/usr/bin/env python
"""Render the results CSV written by tools/train_net.py as a markdown table (baselines vs SEED).

    python tools/results_table.py output/results.csv > results.md
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seed_core.errors import SeedError  # noqa: E402
from seed_det.results import read_results, render_markdown  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="results CSV (default location: OUTPUT_DIR/../results.csv)")
    args = p.parse_args()
    try:
        print(render_markdown(read_results(args.csv)), end="")
    except SeedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
