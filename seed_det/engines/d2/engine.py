"""The Detectron2 engine: DefaultTrainer with the evaluator each dataset needs, launched on 1..N GPUs
or CPU processes (gloo; see processes.py for what the trainer does differently there).

VOC datasets are scored by PascalVOCDetectionEvaluator (AP, AP50, AP75), COCO-format datasets by
COCOEvaluator (box and mask AP; the pure-Python evaluation when Detectron2's compiled extension
is absent). The main process writes metrics.json and appends the results row.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import logging
import os
import weakref
from typing import Mapping

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (MetadataCatalog, build_detection_test_loader, build_detection_train_loader,
                             get_detection_dataset_dicts)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessRaisedException

import seed_det.engines.d2.roi_heads  # noqa: F401  (registers BasicBlockRes5ROIHeads)
from seed_core.constants import LOG_FILE, TRAIN_LOG_FILE
from seed_core.errors import NonFiniteLossError, SeedError
from seed_core.images import SkippedImages
from seed_core.run_dir import RunLog
from seed_core.worker_errors import plain_process_errors, raised_in_spawned_process
from seed_det import RUN_LOGGERS
from seed_det.convert import read_d2_pkl, read_weights_file
from seed_det.data.catalog import MAX_BAD_KEY, readable_training_records
from seed_det.engines.d2.checkpoint import verify_backbone_loaded
from seed_det.engines.d2.config import to_d2_config
from seed_det.engines.d2.datasets import register_in_detectron2
from seed_det.engines.d2.mapper import DecodingMapper
from seed_det.engines.d2.processes import on_cpu, sync_batchnorm_for_cpu, wrap_for_processes
from seed_det.engines.d2.timm_fpn import verify_timm_backbone_loaded  # registers build_timm_fpn_backbone
from seed_det.engines.options import RunOptions
from seed_det.results import metrics_file, record_run
from seed_det.timm_backbone import is_timm_backbone

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "d2_evaluator", "metrics_from_results", "run"]


def fast_coco_eval_available() -> bool:
    """Detectron2's fast COCO evaluation needs its compiled extension, which some builds lack."""
    return importlib.util.find_spec("detectron2._C") is not None


def d2_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind == "coco":
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=fast_coco_eval_available())
    raise SeedError(f"no evaluator for dataset '{dataset_name}' (evaluator_type={kind!r}); use a VOC "
                       "or COCO-format dataset (DATASETS.VOC / DATASETS.COCO_JSON).")


class Trainer(DefaultTrainer):
    def __init__(self, cfg, unreadable: dict | None = None):
        self.unreadable = unreadable  # the preflight's training images that do not open (None: scan here)
        self._train_dicts = None      # built once: PreciseBN asks for the train loader again
        # DefaultTrainer's construction, in its order (model, optimizer, loader, DDP, step trainer,
        # scheduler, checkpointer, hooks), except the DDP wrapping: Detectron2's always names the
        # local GPU, which DDP refuses for a CPU model; wrap_for_processes names it only on CUDA.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_for_processes(model, comm.get_world_size(), comm.get_local_rank())
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if comm.get_world_size() > 1 and on_cpu(cfg):
            replaced = sync_batchnorm_for_cpu(model)
            if replaced:
                logger.info("SyncBN on %d CPU processes: %d torch SyncBatchNorm layers run as SyncBatchNorm2d "
                            "(global-batch statistics over gloo)", comm.get_world_size(), replaced)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return d2_evaluator(cfg, dataset_name, output_folder)

    # Images go through the suite's one decoder and its policy for unreadable files, as in the
    # torchvision engine: training images that do not open are left out (and counted) before sampling,
    # from the preflight's scan of their headers. DefaultTrainer calls this on the instance.
    def build_train_loader(self, cfg):
        name = "+".join(cfg.DATASETS.TRAIN)
        if self._train_dicts is None:
            dicts = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
                proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
            self._train_dicts = readable_training_records(dicts, cfg.DATALOADER.MAX_BAD_FRACTION, name,
                                                          self.unreadable)
        dicts = self._train_dicts
        skipped = SkippedImages(len(dicts), cfg.DATALOADER.MAX_BAD_FRACTION, f"training set '{name}'", MAX_BAD_KEY,
                                where=" in this data-loading process")
        return build_detection_train_loader(cfg, mapper=DecodingMapper(cfg, is_train=True, skipped=skipped),
                                            dataset=dicts)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=DecodingMapper(cfg, is_train=False))

    def build_writers(self):
        # Detectron2 logs training to OUTPUT_DIR/metrics.json by default; that name holds the
        # run's results here (as for the torchvision engine), so the training log is train_log.jsonl.
        from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
        out = self.cfg.OUTPUT_DIR
        return [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(out, TRAIN_LOG_FILE)),
                TensorboardXWriter(out)]


def metrics_from_results(results: Mapping, test_names) -> dict:
    """Detectron2 results ({"bbox": {...}, "segm": {...}}, or one such dict per dataset) -> our metrics.

    The first test dataset is the one recorded; all datasets stay in metrics["per_dataset"].
    """
    if not results:
        raise SeedError("evaluation produced no results; check DATASETS.TEST and TEST.EVAL_PERIOD.")
    per_dataset = {test_names[0]: results} if "bbox" in results else dict(results)
    first = per_dataset[test_names[0]] if test_names[0] in per_dataset else next(iter(per_dataset.values()))
    box, mask = first.get("bbox", {}), first.get("segm", {})
    metrics = {k: float(box[k]) for k in ("AP", "AP50", "AP75")}
    metrics.update({f"mask_{k}": float(mask[k]) for k in ("AP", "AP50", "AP75") if k in mask})
    metrics["per_dataset"] = {name: {task: {k: float(v) for k, v in vals.items()} for task, vals in res.items()}
                              for name, res in per_dataset.items()}
    return metrics


def _setup(cfg, options: RunOptions):
    default_setup(cfg, options)  # reads .config_file and .eval_only, as it would of Detectron2's parsed args
    register_in_detectron2(cfg)


def _check_pretrained_loaded(cfg, model) -> None:
    """A converted backbone that silently does not load would train a random model: refuse."""
    if not cfg.MODEL.WEIGHTS.endswith(".pkl"):
        return
    if is_timm_backbone(cfg):
        matched, total, problems = verify_timm_backbone_loaded(model, read_d2_pkl(cfg.MODEL.WEIGHTS)["model"])
        if problems:
            raise SeedError(f"{cfg.MODEL.WEIGHTS} did not load into the {cfg.MODEL.TIMM.ARCH} backbone "
                            f"({len(problems)} of {total} tensors, e.g. {problems[:3]}). Check MODEL.TIMM.ARCH "
                            "against the converted student.")
        logger.info("%s: matched %d/%d backbone tensors of %s", cfg.MODEL.WEIGHTS, matched, total,
                    cfg.MODEL.TIMM.ARCH)
        return
    weights = read_weights_file(cfg.MODEL.WEIGHTS)
    if weights.kind != "d2_backbone":
        return  # a whole detector: Detectron2 loads it by its own names
    problems = verify_backbone_loaded(model, weights.state)
    if problems:
        raise SeedError(f"{cfg.MODEL.WEIGHTS} did not load into the model's backbone/res5 "
                           f"({len(problems)} problems, e.g. {problems[:3]}). Check MODEL.RESNETS.DEPTH and "
                           "MODEL.ROI_HEADS.NAME against the checkpoint.")


@contextlib.contextmanager
def _detectron2_logging_of_this_run():
    """Detectron2's default_setup adds console and OUTPUT_DIR/log.txt handlers to its loggers for the
    life of the process. A process that runs several fine-tunings (the benchmarks, the demo) would
    then write every later run's lines into each earlier run's log.txt, and each console line once
    per run so far: the handlers this run added go when it ends."""
    loggers = [logging.getLogger(name) for name in ("detectron2", "fvcore")]
    before = [list(lg.handlers) for lg in loggers]
    try:
        yield
    finally:
        for lg, kept in zip(loggers, before):
            for handler in [h for h in lg.handlers if h not in kept]:
                handler.flush()
                lg.removeHandler(handler)
        setup_logger.cache_clear()  # a later run in the same OUTPUT_DIR sets its handlers up again


def _worker(cfg, options: RunOptions) -> dict | None:
    """Train (or evaluate) in one process of the job; returns metrics in the main process."""
    with _detectron2_logging_of_this_run():
        return _set_up_and_run(cfg, options)


def _set_up_and_run(cfg, options: RunOptions) -> dict | None:
    _setup(cfg, options)
    if comm.get_world_size() > 1 and on_cpu(cfg):
        # The processes of one machine share its threads, instead of each taking all of them.
        torch.set_num_threads(max(1, torch.get_num_threads() // comm.get_local_size()))
    # Detectron2 logs to OUTPUT_DIR/log.txt itself; the suite's own records join it there. An error
    # that is not a SeedError on one of several processes: one line naming its rank, traceback in the log.
    log = os.path.join(cfg.OUTPUT_DIR, LOG_FILE)
    with RunLog(cfg.OUTPUT_DIR, RUN_LOGGERS, enabled=comm.is_main_process(), quiet=True), \
            plain_process_errors(comm.get_rank(), comm.get_world_size(), log):
        return _train_or_test(cfg, options)


def _train_or_test(cfg, options: RunOptions) -> dict | None:
    if options.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=options.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)  # TEST.EXPECTED_RESULTS, as DefaultTrainer.train does after training
    else:
        trainer = Trainer(cfg, options.unreadable())
        trainer.resume_or_load(resume=options.resume)
        if trainer.start_iter == 0:  # fresh start from MODEL.WEIGHTS, not a resumed run
            _check_pretrained_loaded(cfg, trainer.model.module if hasattr(trainer.model, "module")
                                     else trainer.model)
        try:
            trainer.train()
        except FloatingPointError as err:  # Detectron2's non-finite loss check; its message names the iteration
            raise NonFiniteLossError(f"the detection loss is not finite: {err}. Lower SOLVER.BASE_LR or lengthen "
                                "SOLVER.WARMUP_ITERS.") from err
        results = getattr(trainer, "_last_eval_results", None)
    if not comm.is_main_process():
        return None
    metrics = metrics_from_results(results, list(cfg.DATASETS.TEST))
    record_run(cfg.OUTPUT_DIR, options.config_file, cfg.MODEL.WEIGHTS, metrics,
               csv_path=cfg.RESULTS_CSV or None, engine="detectron2", eval_only=options.eval_only,
               dataset="+".join(cfg.DATASETS.TEST))
    return metrics


def run(cfg, options: RunOptions) -> dict | None:
    """Train (unless options.eval_only) and evaluate the config `cfg` (parsed and checked once by
    seed_det.engines.run_config) on 1..N processes (GPUs, or CPU processes over gloo); returns the
    metrics in the launching process of machine 0 (None on other machines)."""
    cfg = to_d2_config(cfg)
    world = options.num_gpus * options.num_machines
    if world <= 1:
        return _worker(cfg, options)  # Detectron2's launch() drops the return value of a single process
    try:
        launch(_worker, options.num_gpus, num_machines=options.num_machines, machine_rank=options.machine_rank,
               dist_url=options.dist_url, args=(cfg, options), timeout=datetime.timedelta(seconds=cfg.DIST_TIMEOUT))
    except ProcessRaisedException as e:  # its message is the process's whole traceback: keep its one line
        raise raised_in_spawned_process(e) or e from None
    if options.machine_rank != 0:
        return None
    # The spawned main process recorded the run; hand its metrics to the caller.
    with open(metrics_file(cfg.OUTPUT_DIR, options.eval_only)) as f:
        return json.load(f)["metrics"]
