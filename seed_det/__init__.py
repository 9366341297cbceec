"""Detection transfer for SEED students: Detectron2 checkpoint conversion, configs, engines, results.

Everything importable from here works without Detectron2; Detectron2-only code lives in
`seed_det.engines.d2` and is imported only by the Detectron2 engine.
"""

__version__ = "0.1.0"
