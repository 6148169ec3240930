"""Typed configuration: dataclasses with defaults, filled from hydra's composed YAML.

Hydra composes `configs/` at the entry points only; everything below the CLI receives the
frozen dataclasses built here. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration value or key that worldsim cannot use."""


def config_dir() -> Path:
    """The folder of hydra configs: the repo's `configs/` in a checkout, else the installed copy."""
    repo = Path(__file__).resolve().parent.parent / "configs"
    if (repo / "collect.yaml").is_file():
        return repo
    import worldsim_configs

    return Path(worldsim_configs.__file__).parent


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, rejecting unknown keys and wrong types.

    >>> @dataclasses.dataclass
    ... class A:
    ...     n: int = 1
    >>> from_dict(A, {"n": 2})
    A(n=2)
    >>> from_dict(A, {"m": 2})
    Traceback (most recent call last):
    ...
    worldsim.config.ConfigError: unknown config key 'm'; valid keys: n
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or cls.__name__} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, where + k) for k, v in data.items()}
    seed = kwargs.get("seed")  # every config's seed feeds NumPy's generators: 0 .. 2**63-1
    if isinstance(seed, int) and not 0 <= seed < 2**63:
        raise ConfigError(f"{where}seed must be an integer in [0, 2**63), got {seed}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        elem = args[0] if args else Any
        return origin(_coerce(elem, v, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp in (int, str, bool) and type(value) is not tp:
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def to_json(cfg) -> dict[str, Any]:
    """A config as plain JSON data (tuples become lists), as it reads back from disk:
    `from_dict(type(cfg), to_json(cfg)) == cfg`."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config(name: str, cls: type[T], overrides: list[str]) -> T:
    """Compose `configs/<name>.yaml` with hydra `overrides` into a `cls` instance.

    The dataclass defaults are the base layer (`<name>_schema` in hydra's ConfigStore), so
    every field can be overridden from the command line, and the YAML holds only presets.
    """
    from hydra.core.config_store import ConfigStore

    defaults = json.loads(json.dumps(dataclasses.asdict(cls())))  # tuples -> lists
    ConfigStore.instance().store(name=f"{name}_schema", node=defaults)
    return from_dict(cls, compose(name, overrides, [f.name for f in dataclasses.fields(cls)]))


def compose(name: str, overrides: list[str], valid: list[str]) -> dict[str, Any]:
    """Compose `configs/<name>.yaml` with hydra overrides into a plain, resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(name, overrides=overrides)
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(str(e), name, valid)) from None


def _one_line(msg: str, name: str, valid: list[str]) -> str:
    """Turn hydra's multi-line errors into one line that lists the valid choices."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    if "Could not find" in msg and "Available options" in msg:
        i = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        group = lines[i].split("'")[1] if "'" in lines[i] else "option"
        bad = lines[0].split("Could not find")[-1].strip(" '")
        options = []
        for ln in lines[i + 1 :]:
            if ln.startswith("Config search path"):  # hydra's search path follows the list
                break
            options.append(ln)
        return f"unknown {group} {bad.split('/')[-1]!r}; valid: {', '.join(options)}"
    if "not in struct" in msg or "Could not override" in msg:
        key = lines[0].split("'")[1] if "'" in lines[0] else lines[0]
        return f"unknown config key {key!r} for '{name}'; valid keys: {', '.join(valid)}"
    return " ".join(lines)


def describe(cls: type, prefix: str = "", values=None) -> list[tuple[str, Any, str]]:
    """(key, default, docstring) for every field of a config dataclass, nested ones flattened;
    the defaults are `values`' (a `cls` instance, e.g. as the YAML presets make it) if given,
    else the dataclass's own."""
    docs = _field_docs(cls)
    values = cls() if values is None else values
    rows = []
    for f in dataclasses.fields(cls):
        default = getattr(values, f.name)
        if dataclasses.is_dataclass(default):
            rows.append((prefix + f.name, "", docs.get(f.name, "")))
            rows += describe(type(default), prefix + f.name + ".", default)
        else:
            rows.append((prefix + f.name, default, docs.get(f.name, "")))
    return rows


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings: the string literal right after each field in the class body."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        body = tree.body if isinstance(tree, ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                if isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
