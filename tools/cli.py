"""The one argument module of the command-line tools: every tool builds its parser here and runs its
body through `run`, so that all of them behave alike:

- `main(argv=None) -> int`; the console scripts (`seed-train-net`, ...) and `python tools/<name>.py`
  both call it;
- the same flag names for the same things: `--config` / `--config-file` (a YAML config), trailing
  `KEY VALUE` config overrides, `--output-dir` (the output folder; a benchmark's results folder
  too, see `add_results_dir`), `--resume`;
- bad input ends with one line `error: ...` on stderr and exit code 2, never a traceback.

The tools hand the libraries typed options (a CfgNode, seed_det.engines.RunOptions, ...), never the
argparse Namespace built here.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, NoReturn

from seed_core.errors import SeedError

USAGE_ERROR = 2  # exit code of bad input (argparse's own)


class UsageError(SystemExit):
    """A command line the parser refuses; code 2, as argparse's own exit (it is a SystemExit, so
    code that only parses still stops there)."""

    def __init__(self, message: str):
        super().__init__(USAGE_ERROR)
        self.message = message


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the tools' conventions: the module docstring as description, kept as written,
    and a refused command line reported in one line (by `run`)."""

    def __init__(self, doc: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=doc, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_config(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """`--config` / `--config-file` (one flag, two spellings) -> args.config_file."""
    parser.add_argument("--config", "--config-file", dest="config_file", required=required, metavar="FILE",
                        default=None if required else "", help=help)


def add_output_dir(parser: argparse.ArgumentParser, help: str, default: str | None = None,
                   aliases: tuple = (), dest: str = "output_dir") -> None:
    """`--output-dir DIR` -> args.output_dir (for a config-driven tool: OUTPUT_DIR, see `overrides`).
    The benchmarks' results folder is `--output-dir` too, with their earlier `--out-dir` as an alias:
    see `add_results_dir`."""
    parser.add_argument("--output-dir", *aliases, dest=dest, default=default, metavar="DIR", help=help)


def add_results_dir(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """A benchmark's results folder: `--output-dir DIR` (alias `--out-dir`) -> args.out_dir."""
    add_output_dir(parser, help, default=default, aliases=("--out-dir",), dest="out_dir")


def add_resume(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--resume", action="store_true", help=help)


def parse_with_overrides(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the parser's flags wherever they stand, also after the overrides
    (`... MODEL.WEIGHTS m.pth --eval-only`, as Detectron2 users type); every other word is one of
    the `KEY VALUE` config overrides, in `args.opts`. Unknown flags are an error."""
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.BASE_LR 0.01; flags may come before or after them")
    return parser.parse_intermixed_args(argv)


def overrides(args: argparse.Namespace) -> tuple:
    """The `KEY VALUE` overrides of the command line, with `--output-dir` as the last (OUTPUT_DIR)."""
    opts = tuple(args.opts)
    if getattr(args, "output_dir", None):
        opts += ("OUTPUT_DIR", args.output_dir)
    return opts


def setup_logging(level: str | None = None) -> None:
    """Log to stderr; INFO by default (SEED_LOG_LEVEL), warnings only on the other processes of a
    multi-process run."""
    from seed_core.distributed import launched_rank  # torch: only when a tool runs, not on import
    rank = launched_rank()
    level = level or os.environ.get("SEED_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level if rank == 0 else "WARNING",
                        format=f"[%(asctime)s rank{rank} %(name)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")


def error(message: str) -> int:
    """Report bad input: one line on stderr; returns the exit code."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return USAGE_ERROR


def fail(message: str) -> NoReturn:
    """`error` and exit at once (for code below `main`)."""
    sys.exit(error(message))


def run(body: Callable[[], int | None], errors: tuple = (SeedError,)) -> int:
    """Run a tool's body (which parses the command line and does the work) and return its exit code:
    a refused command line, or one of `errors` (what bad input raises), is one `error: ...` line and 2."""
    try:
        return body() or 0
    except UsageError as e:
        return error(e.message)
    except errors as e:
        return error(str(e))


class DownloadBar:
    """A progress bar on stderr for a library's download callback, progress(bytes done, total or
    None); use it as a context manager so the bar is closed."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=self.label, file=sys.stderr, dynamic_ncols=True)
        else:
            self.bar.update(done - self.bar.n)
        if total is not None and done >= total:
            self.bar.close()  # done: what the tool prints next starts on a line of its own

    def __enter__(self) -> "DownloadBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
