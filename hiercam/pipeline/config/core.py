"""The whole pipeline config: its sections together, checked when built, read from TOML or JSON files.

A config file has one table per section; every key is optional (the defaults of
``hiercam.pipeline.config.sections``) and unknown keys are errors:

```toml
seed = 0
device = "cpu"

[data]
dataset = "fashion_scenes"
train_scenes = 3000

[model]
backbone = "small_convnet"

[train]
epochs = 6

[method]
levels = [4, 2]
orthogonal_weight = 1e-4
```
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hiercam._io import read_json_file, read_text_file
from hiercam.pipeline.config._rules import validate
from hiercam.pipeline.config.sections import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PipelineConfig", "load_config"]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs; recorded in full in every run directory.

    Attributes:
        seed: seed of data generation, initialisation and shuffling.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (``N`` a device number: ``"cuda:1"``) or ``"auto"`` (CUDA
            when available); any other spelling is refused when the config is built.
        ablation: also train the single-branch level models and report the paper's Table 4 rows.
        ensemble: also train more base classifiers (other seeds) and report the ensemble control: the
            Grad-CAMs of the base classifier and of these averaged, as many single-branch models as the method
            trains: with ``method.branches = 1`` the base and one per group level (3 models for levels
            ``[4, 2]``), with ``method.branches = 2`` two (the training compute of one two-branch model);
            two when the grouping left no group level, and two with ``method.level_heads`` (whose method
            trains one model beside the base classifier).
        shuffled_control: also retrain the method's level models on a shuffled hierarchy
            ([`shuffled_hierarchy`][hiercam.shuffled_hierarchy] with ``seed``: the same group sizes, the
            classes placed at random), two-branch or single-branch as ``method.branches`` says (one
            ``LevelHeadsNet`` with ``method.level_heads``), and report
            their Eq. 6 fusion (row ``shuffled``, fused like the method's row). It tells whether the
            grouping's content, not the extra models, makes the method's gain. Off by default (it trains
            the level models again); on in ``bench_config()`` and the benchmark configs.
        data, model, train, method, evaluation: the sections (``hiercam.pipeline.config.sections``).
    """

    seed: int = 0
    device: str = "auto"
    ablation: bool = True
    ensemble: bool = True
    shuffled_control: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build and validate a config from nested mappings (as read from TOML or JSON)."""
        config: PipelineConfig = _build(cls, data, "")
        return config

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with top-level fields or whole sections replaced; ``section__key=value`` sets one key."""
        return PipelineConfig.from_dict(_apply(self.to_dict(), changes))


def _apply(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes``: ``key=value`` at the top level, ``section__key=value`` in a table."""
    merged = {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if not name:
            merged[key] = value
            continue
        if section not in {f.name for f in dataclasses.fields(PipelineConfig)}:
            raise ConfigError(f"unknown config section {section!r}")
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"`{section}` must be a table, got {type(table).__name__}")
        table[name] = value
    return merged


def load_config(path: str | Path, **changes: Any) -> PipelineConfig:
    """Read a ``PipelineConfig`` from a ``.toml`` or ``.json`` file (plain data: nothing is executed).

    ``changes`` override entries before validation, as in ``PipelineConfig.replace``
    (``data__root="/data/VOCdevkit"``), so a file may leave out what the command line supplies.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: a folder or an unreadable file, text that is not UTF-8, TOML or JSON, a JSON value that
            is not an object, unknown keys, wrong types or invalid values (the message names the file and
            the key).
    """
    source = Path(path)
    if source.suffix == ".json":
        try:
            data = read_json_file(source)
        except FileNotFoundError:
            raise
        except ValueError as error:
            raise ConfigError(str(error)) from None
    else:
        try:
            text = read_text_file(source)
        except FileNotFoundError:
            raise
        except ValueError as error:
            raise ConfigError(str(error)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: cannot parse: {error}") from None
        except RecursionError:
            raise ConfigError(f"{source}: cannot parse: nested too deeply to be read") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must hold a table of settings (a JSON object), got a {type(data).__name__}"
        )
    try:
        return PipelineConfig.from_dict(_apply(data, changes))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"`{prefix or 'config'}` must be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)  # type: ignore[arg-type]
        else:
            values[name] = _coerce(value, hint, key)
    try:
        return cls(**values)
    except TypeError as error:  # pragma: no cover - guarded by the key check above
        raise ConfigError(str(error)) from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):  # true is not 1, 2.0 is not 2
            raise ConfigError(f"`{key}` must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {type(value).__name__}")
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"`{key}` must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0] if len(inner) == 1 else Union[tuple(inner)], key)  # noqa: UP007
    if origin in (Union, UnionType):  # the first alternative that accepts the value
        for alternative in args:
            try:
                return _coerce(value, alternative, key)
            except ConfigError:
                pass
        lists = [a for a in args if get_origin(a) is tuple]
        if isinstance(value, (list, tuple)) and lists:  # a list with a bad entry: name the entry
            _coerce(value, lists[0], key)
        raise ConfigError(f"`{key}` must be {' or '.join(map(_describe, args))}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{key}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{key}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, got {value!r}")
        return value
    raise ConfigError(f"`{key}` has an unsupported type {hint!r}")  # pragma: no cover


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in a config file, for error messages."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if get_origin(hint) is tuple:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, repr(hint))
