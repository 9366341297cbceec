"""The applications of the suite, an installed package (console scripts `seed-*` in pyproject.toml):

    tools/<name>.py   the command-line tools; `python tools/<name>.py` and `seed-<name>` run the same
                      `main(argv=None) -> int`
    tools/cli.py      the one argument module they share
    tools/backbone_eval.py  what eval_knn.py and eval_linear.py do behind their arguments
    tools/pipeline/   the demo: cached stages scheduled side by side, its report; the detection
                      benchmarks reuse its stages
    tools/benchmarking/  the experiments behind benchmarks/*.py (paper claim, lr sweep, transfer
                      claim, teacher ladder)

Libraries (seed_core, seed_det) never import from here; the generated datasets the tools write
live in seed_det.data.synthetic.
"""
