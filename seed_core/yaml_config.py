"""YAML configs for every CfgNode of the project (distillation and detection alike).

One loading layer: `_BASE_` inheritance (paths relative to the including file), `KEY VALUE`
overrides, integers accepted where the default is a float (`WARMUP_EPOCHS: 0`), and every problem
reported as one `ConfigError` line naming the file (and the line, when YAML knows it) instead of a
parser traceback or a RecursionError.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable

import yaml

from .errors import ConfigError

BASE_KEY = "_BASE_"


def flatten_cfg(node, prefix: str = "") -> dict[str, Any]:
    """{"SOLVER.BASE_LR": 0.03, ...}: every leaf of a (nested) config by its dotted key; tuples
    become lists, so a config and its YAML dump compare equal."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten_cfg(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# ---------------------------------------------------------------------------------------------- files
def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping a YAML config describes, its `_BASE_` files merged underneath it."""
    return _read_with_bases(os.fspath(path), ())


def _read_with_bases(path: str, including: tuple[str, ...]) -> dict:
    real = os.path.realpath(path)
    if real in including:
        chain = " -> ".join(os.path.basename(p) for p in (*including, real))
        raise ConfigError(f"{path}: _BASE_ cycle ({chain}); a config cannot inherit from itself")
    data = _read_one(path, including)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _BASE_ must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for base in bases:
        _merge_into(_read_with_bases(_base_path(path, base), (*including, real)), merged, path)
    _merge_into(data, merged, path)
    return merged


def _base_path(including_file: str, base: str) -> str:
    base = os.path.expanduser(base)
    return base if os.path.isabs(base) else os.path.join(os.path.dirname(including_file), base)


def _read_one(path: str, including: tuple[str, ...]) -> dict:
    if not os.path.isfile(path):
        if including:
            raise ConfigError(f"{including[-1]}: its _BASE_ file {path} does not exist")
        what = "a folder, not a config file" if os.path.isdir(path) else "not found"
        raise ConfigError(f"config file {what}: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as e:
        # safe_load refuses tags such as !!python/object: configs are plain data, never code.
        raise ConfigError(f"{_where(path, e)}: unsupported YAML tag ({_first_line(e.problem)}); a config "
                          f"holds plain values only") from None
    except yaml.YAMLError as e:
        detail = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{_where(path, e)}: not valid YAML: {_first_line(detail)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config is a mapping of KEY: value lines")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of KEY: value lines, not a "
                          f"{type(data).__name__} ({_first_line(repr(data))[:60]})")
    return data


def _where(path: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f"{path}, line {mark.line + 1}" if mark is not None else path


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def _merge_into(src: dict, dst: dict, path: str) -> None:
    """Values of `src` override `dst`; sections merge key by key."""
    for k, v in src.items():
        if isinstance(v, dict) and k in dst:
            if not isinstance(dst[k], dict):
                raise ConfigError(f"{path}: '{k}' is a section here but a value in its _BASE_")
            _merge_into(v, dst[k], path)
        else:
            dst[k] = v


# ---------------------------------------------------------------------------------------------- merging
def merge_file(cfg, path: str | os.PathLike, schema: str) -> None:
    """Merge a YAML file (with its `_BASE_` chain) into `cfg`, in place. `schema` names where the
    known keys are defined, for the unknown-key message."""
    data = read_config_file(path)
    _ints_to_floats(cfg, data)
    try:
        cfg.merge_from_other_cfg(type(cfg)(data))
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise config_error(cfg, os.fspath(path), e, schema) from None


def merge_overrides(cfg, opts: Iterable, schema: str) -> None:
    """Merge `KEY VALUE` pairs into `cfg`, in place (values are Python literals or plain strings)."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides must be KEY VALUE pairs, got an odd number ({len(opts)}): "
                          f"{' '.join(map(str, opts))}")
    pairs = []
    for key, value in zip(opts[0::2], opts[1::2]):
        default = cfg_value(cfg, str(key), missing=None)
        if type(default) is float:  # noqa: E721 - bool is an int; only real floats take ints
            decoded = type(cfg)._decode_cfg_value(value)
            if type(decoded) is int:  # noqa: E721
                value = float(decoded)
        pairs += [key, value]
    try:
        cfg.merge_from_list(pairs)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise config_error(cfg, "command line", e, schema) from None


def cfg_value(cfg, dotted: str, missing=KeyError):
    """cfg["SOLVER"]["BASE_LR"] for "SOLVER.BASE_LR"; a missing key raises KeyError unless a
    `missing` value is given."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if missing is KeyError:
                raise KeyError(dotted)
            return missing
        node = node[part]
    return node


def _ints_to_floats(defaults, data: dict) -> None:
    """YAML reads `0` as an int; where the default is a float, an int means that float."""
    for k, v in data.items():
        default = defaults.get(k) if isinstance(defaults, dict) and isinstance(k, str) else None
        if isinstance(default, dict) and isinstance(v, dict):
            _ints_to_floats(default, v)
        elif type(default) is float and type(v) is int:  # noqa: E721 - bools stay refused
            data[k] = float(v)


_UNKNOWN = re.compile(r"Non-existent (?:config )?key:\s*(\S+)")
_MISMATCH = re.compile(r"Type mismatch \((.+?) vs\. (.+?)\) with values \((.*) vs\. (.*)\) for config key: (\S+)",
                       re.S)


def config_error(cfg, source: str, err: Exception, schema: str) -> ConfigError:
    """yacs reports unknown keys as KeyError/AssertionError and types as ValueError: one line each,
    naming the key."""
    text = str(err.args[0]) if err.args else str(err)
    unknown = _UNKNOWN.search(text)
    if unknown:
        key = unknown.group(1).strip("'\"")
        hints = difflib.get_close_matches(key, list(flatten_cfg(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(hints)}?" if hints else ""
        return ConfigError(f"{source}: unknown config key '{key}'.{hint} Fix the spelling or remove it "
                           f"(the known keys are in {schema}).")
    mismatch = _MISMATCH.search(text)
    if mismatch:
        old_t, new_t, old_v, new_v, key = mismatch.groups()
        return ConfigError(f"{source}: {key} must be {_show(old_t, old_v, 'like its default')}, "
                           f"got {_show(new_t, new_v)}")
    return ConfigError(f"{source}: {text}")


def _show(type_text: str, value: str, lead: str = "") -> str:
    """"a number (0.5)" from yacs's "<class 'float'>" and "0.5"; sections are not printed."""
    m = re.search(r"'([\w.]+)'", type_text)
    name = m.group(1).rsplit(".", 1)[-1] if m else type_text
    if name == "CfgNode":
        return "a section of keys"
    kind = {"str": "a string", "int": "an integer", "float": "a number", "bool": "True or False",
            "list": "a list", "tuple": "a tuple", "NoneType": "None"}.get(name, name)
    return f"{kind} ({lead + ' ' if lead else ''}{_first_line(value)[:60]})"
