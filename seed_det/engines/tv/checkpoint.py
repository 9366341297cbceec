"""Atomic checkpoints of the torchvision engine and Detectron2-style `last_checkpoint` resume."""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

from seed_core.checkpoint_io import atomic_save, atomic_write_text, load_untrusted
from seed_core.constants import LAST_CHECKPOINT_FILE
from seed_core.errors import CheckpointError
from seed_det.convert import TV_CHECKPOINT_TAG

from .weights import WeightsError

logger = logging.getLogger(__name__)


def save_checkpoint(output_dir: str, name: str, model, optimizer=None, scheduler=None, iteration: int = 0,
                    grad_scaler=None, skipped_images=None) -> str:
    """Write output_dir/name via a temp file + os.replace, so a crash never leaves half a file.
    With several processes, only the main one calls this (all hold the same weights)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    payload = {"engine": TV_CHECKPOINT_TAG, "model": model.state_dict(), "iteration": iteration}
    for key, part in (("optimizer", optimizer), ("scheduler", scheduler), ("grad_scaler", grad_scaler),
                      ("skipped_images", skipped_images)):
        if part is not None:
            payload[key] = part.state_dict()
    atomic_save(payload, path)
    atomic_write_text(name, os.path.join(output_dir, LAST_CHECKPOINT_FILE))
    logger.info("saved checkpoint %s (iteration %d)", path, iteration)
    return path


def last_checkpoint(output_dir: str) -> Optional[str]:
    marker = os.path.join(output_dir, LAST_CHECKPOINT_FILE)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        path = os.path.join(output_dir, f.read().strip())
    return path if os.path.isfile(path) else None


def load_checkpoint(path: str) -> Dict:
    try:
        ckpt = load_untrusted(path)
    except CheckpointError as e:
        raise WeightsError(f"{e}; delete it to restart from MODEL.WEIGHTS") from e
    if not isinstance(ckpt, dict) or ckpt.get("engine") != TV_CHECKPOINT_TAG:
        raise WeightsError(f"{path} is not a torchvision-engine checkpoint; delete it or use another OUTPUT_DIR")
    return ckpt
