"""Detection transfer for SEED students: Detectron2 checkpoint conversion, configs, engines, results.

Everything importable from here works without Detectron2; Detectron2-only code lives in
`seed_det.d2` and is imported only by the Detectron2 engine.
"""

__version__ = "0.1.0"


class SeedDetError(Exception):
    """A problem with the user's input (config, checkpoint, dataset) that they can fix.

    The message says what was wrong and what to do; CLIs print it without a traceback.
    """
