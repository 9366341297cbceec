"""How a detection run is launched: the options both engines take beside the config.

`tools/train_net.py` fills them from its command line; a program builds them directly:

    from seed_det.engines import RunOptions, main
    main(RunOptions("configs/voc_r18_seed.yaml", opts=("MODEL.WEIGHTS", "seed_r18.pkl")))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RunOptions:
    """The launch flags of a detection run (Detectron2's `launch` flags have the same meaning; on
    the CPU, `num_gpus` N starts N processes over gloo, on either engine)."""

    config_file: str = ""               # detection YAML; recorded in the results row
    engine: str = "auto"                # auto | detectron2 | torchvision
    opts: tuple = ()                    # `KEY VALUE` overrides of the config file (read by `main`)
    resume: bool = False                # continue from OUTPUT_DIR/last_checkpoint
    overwrite: bool = False             # OUTPUT_DIR holds a run: move it to OUTPUT_DIR/previous-<time>/
    eval_only: bool = False             # evaluate MODEL.WEIGHTS, no training
    num_gpus: int = 1                   # processes (GPUs) per machine
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"              # tcp://host:port of machine 0 for multi-node runs
    # Set by seed_det.engines.run_config from the preflight, the one scan of the training images'
    # headers: ((file name, why it cannot be read), ...) of those that do not open, which the engine
    # leaves out (and reports) without reading a header again; None: the engine scans them itself.
    unreadable_training_images: Optional[tuple] = None

    def __post_init__(self):
        object.__setattr__(self, "opts", tuple(self.opts))  # a list given by a caller is kept as a tuple

    def unreadable(self) -> Optional[dict]:
        """unreadable_training_images as {file name: why}, or None."""
        found = self.unreadable_training_images
        return None if found is None else dict(found)
