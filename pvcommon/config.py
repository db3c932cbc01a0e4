"""The one config loader of the project: a YAML file plus `key.path=value` overrides into typed
dataclasses. Unknown keys, wrong types, malformed YAML and overrides into a scalar fail with a
ConfigError that names the file or the key (pipeline/config.py and megatron_ext/training/config.py
declare their dataclasses and call this)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from pvcommon.errors import ConfigError

__all__ = ["ConfigError", "read_yaml", "apply_overrides", "build", "load"]


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {getattr(e, 'problem', None) or e}"


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The mapping in a YAML file; a missing file, malformed YAML or a non-mapping names the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {path}" if not p.exists() else f"{what} {path} is not a file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: {_yaml_problem(e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(tree: dict, items: Iterable[str], need_section: bool = False) -> dict:
    """`section.key=value` (the value parsed as YAML; empty means null) into `tree`, in place."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r}: {dotted!r} is not a key path like section.key")
        if need_section and len(keys) < 2:
            raise ConfigError(f"override {item!r}: name the section, e.g. train.steps=10")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is {_yaml_problem(e)}") from None
        node = tree
        for depth, k in enumerate(keys[:-1]):
            nxt = node.setdefault(k, {})
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                section = ".".join(keys[:depth + 1])
                raise ConfigError(f"override {item!r}: {section} is a value ({nxt!r}), not a section; "
                                  f"set {section}=... instead")
            node = nxt
        node[keys[-1]] = value
    return tree


def _check(value, hint, key: str):
    """`value` as the declared type: ints where floats are meant, and YAML 1.1's string reading of
    `2e-3` or `"10"`, convert; anything else that does not fit names the key."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        hint = args[0] if len(args) == 1 else Any
        origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if value is None:
        raise ConfigError(f"{key}: must not be null")
    base = origin or hint
    if dataclasses.is_dataclass(base):
        return build(base, value, key)
    name = getattr(base, "__name__", str(base))
    bad = ConfigError(f"{key}: expected {name}, got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise bad from None
        if base is int:
            if isinstance(number, float) and not number.is_integer():
                raise bad
            return int(number)
        return float(number)
    if base is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `data.tokenizer=123` or a numeric-looking name
        if not isinstance(value, str):
            raise bad
        return value
    if base in (list, tuple, dict) and not isinstance(value, base if base is not tuple else (list, tuple)):
        raise bad
    return value


def build(cls, data: Any, where: str = ""):
    """A `cls` dataclass from a mapping; nested dataclass fields from nested mappings."""
    label = where or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping (a section), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - fields)
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {unknown}; known: {sorted(fields)}")
    return cls(**{name: _check(value, hints[name], f"{where}.{name}" if where else name)
                  for name, value in data.items()})


def load(cls, path: Optional[str | Path], overrides: Iterable[str] = (), need_section: bool = False,
         what: str = "config file"):
    """`cls` from the YAML at `path` (None: all defaults) with `key.path=value` overrides."""
    tree = read_yaml(path, what) if path is not None else {}
    return build(cls, apply_overrides(tree, overrides, need_section))
