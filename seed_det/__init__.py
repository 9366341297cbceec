"""Detection transfer for SEED students: Detectron2 checkpoint conversion, configs, engines, results.

Everything importable from here works without Detectron2; Detectron2-only code lives in
`seed_det.engines.d2` and is imported only by the Detectron2 engine.
"""

__version__ = "0.1.0"

# The loggers whose records a detection run keeps in OUTPUT_DIR/log.txt (seed_core.run_dir.RunLog).
RUN_LOGGERS = ("seed_det", "seed_core")
