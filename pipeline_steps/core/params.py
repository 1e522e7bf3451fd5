"""params.yaml -> frozen config dataclasses, strictly: a misspelt or unknown key is an error."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline_steps.core.errors import InputError

T = TypeVar("T")


class ParamsError(InputError):
    """A value in params.yaml (or a profile) is missing, unknown or of the wrong kind."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file (run `smdm-profile default` to write it)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ParamsError(f"{path}:{line} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(params).__name__}")
    return params


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        return tuple(_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads "1e18" as a string
        except ValueError:
            raise ParamsError(f"{where}: expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is bool and not isinstance(value, bool):
        raise ParamsError(f"{where}: expected true/false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ParamsError(f"{where}: expected a string, got {value!r}")
    return value


def build_config(cls: type[T], values: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, naming `where` (e.g. `pretrain.optim`) in every error."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping of {cls.__name__} fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where}: missing required key {name!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ParamsError(f"{where}: {err}") from err


def section(params: dict[str, Any], dotted: str) -> Any:
    """params['a']['b'] for 'a.b', with an error naming the missing part."""
    node: Any = params
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params: missing section {'.'.join(walked)!r}")
        node = node[part]
    return node


def load_config(cls: type[T], dotted: str, path: str | Path = "params.yaml") -> T:
    return build_config(cls, section(load_params(path), dotted), dotted)
