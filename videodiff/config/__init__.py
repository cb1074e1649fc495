"""Load a config: defaults <- YAML files (``_BASE_`` chains) <- ``KEY VALUE`` overrides, then validate.

Every error is one line naming the key, where its value came from (file or command line) and what is
allowed, and it is raised before any work starts.
"""
import ast
import difflib
import os
from typing import Dict, List, Optional, Sequence

import yaml
from fvcore.common.config import CfgNode

from videodiff.config.defaults import get_defaults
from videodiff.config.validate import ConfigError, validate_config

__all__ = ["ConfigError", "get_defaults", "load_config", "dump_config"]

BASE_KEY = "_BASE_"


def load_config(cfg_file: Optional[str] = None, opts: Sequence[str] = ()) -> CfgNode:
    """Return the frozen, validated config for ``cfg_file`` plus command-line ``opts``."""
    cfg = get_defaults()
    sources: Dict[str, str] = {}
    if cfg_file:
        _merge_yaml_file(cfg, cfg_file, sources, chain=[])
    _merge_opts(cfg, list(opts), sources)
    validate_config(cfg, sources)
    cfg.freeze()
    return cfg


def dump_config(cfg: CfgNode, path: str) -> None:
    """Write the merged config as YAML (the run's ``config.yaml``)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(cfg.dump())


def _merge_yaml_file(cfg: CfgNode, path: str, sources: Dict[str, str], chain: List[str]) -> None:
    if not os.path.isfile(path):
        where = f" (the {BASE_KEY} of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    if os.path.abspath(path) in chain:
        raise ConfigError(f"{path}: {BASE_KEY} chain loops back to itself: {' -> '.join(chain + [path])}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file "
                          f"as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{path}, line {e.line}: {e.key} is given twice in the same section (YAML would keep "
                          f"only the last one silently); merge the two") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base:
        # A relative _BASE_ is relative to the file that names it, as in detectron2 / fvcore.
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        _merge_yaml_file(cfg, base_path, sources, chain + [os.path.abspath(path)])
    _merge_dict(cfg, data, prefix="", source=path, sources=sources)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping (``SOLVER:`` ... ``SOLVER:``) is an error
    instead of the first one being silently dropped."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _merge_dict(node: CfgNode, data: dict, prefix: str, source: str, sources: Dict[str, str]) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in node:
            raise ConfigError(_unknown_key_message(node, full, key, source))
        if isinstance(node[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} (from {source}) is a group of keys; set {full}.<KEY> instead")
            _merge_dict(node[key], value, f"{full}.", source, sources)
            continue
        node[key] = _coerce(node[key], value, full, source)
        sources[full] = source


def _merge_opts(cfg: CfgNode, opts: List[str], sources: Dict[str, str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs; '{opts[-1]}' has no value")
    for full, raw in zip(opts[0::2], opts[1::2]):
        node, parts = cfg, full.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                raise ConfigError(_unknown_key_message(node, full, part, "command line"))
            if i < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], CfgNode):
            raise ConfigError(f"{full} (from command line) is a group of keys; set {full}.<KEY> instead")
        node[parts[-1]] = _coerce(node[parts[-1]], _parse_literal(raw), full, "command line")
        sources[full] = "command line"


def _parse_literal(raw: str):
    """Command-line values are Python or YAML literals: ``3``, ``1e-4``, ``True``, ``[0.9,0.95]``, ``abc``."""
    if not isinstance(raw, str):
        return raw  # opts given from Python may already be typed
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _coerce(default, value, key: str, source: str):
    """Give ``value`` the type of the default; int -> float and tuple <-> list are the only conversions."""
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, float) and isinstance(value, str) and _is_float(value):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    elif isinstance(value, type(default)):
        return value
    if default is None:
        return value
    raise ConfigError(
        f"{key} (from {source}): expected {type(default).__name__} like {default!r}, got {value!r}"
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _unknown_key_message(node, full: str, part: str, source: str) -> str:
    if isinstance(node, CfgNode):
        close = difflib.get_close_matches(part, list(node.keys()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; allowed here: {', '.join(sorted(node.keys()))}"
    else:
        hint = ""
    return f"unknown config key {full} (from {source}){hint}"
