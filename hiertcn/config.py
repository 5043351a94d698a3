"""Run configuration: one dataclass, filled from defaults, a TOML/YAML file, then flags.

A file holds the same keys as :class:`Config` (``data``, ``epochs``, ``lr``, ...)
plus an optional ``model_config`` table of keyword arguments per model name::

    epochs = 5
    lr = 0.002
    [model_config.hiertcn]
    levels = 3

Unknown keys are rejected by name, so a typo never silently falls back to a default, and
values of the wrong type by name too (a float may be written as text, as YAML 1.1 reads ``1e-3``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("last-session", "user", "time")
TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")  # hiertcn.data.readers.TIME_UNITS, without importing Arrow
PRECISIONS = ("fp32", "bf16")  # hiertcn.train.fit's autocast choice


@dataclass
class Config:
    # data
    data: str | None = None  # interaction log path; None = the built-in synthetic XING log
    format: str | None = None  # xing | csv | parquet | movielens | recbole (detected when None)
    preset: str | None = None  # hiertcn-xing | hrnn-xing | none (hiertcn-xing for xing logs)
    preset_until_stable: bool = False  # repeat the preset's count filters until none removes anything
    split: str = "last-session"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    session_col: str | None = None
    column_names: list[str] | None = None  # a CSV/TSV without a header line: its columns' names in order
    sep: str | None = None
    time_unit: str = "auto"  # auto (each number by its size, text ISO 8601) | s | ms | us | ns | iso
    skip_bad_rows: bool = False  # drop (and count) unparsable rows instead of raising
    session_gap: int | None = None  # seconds that start a session; None: 1800, or no gap cuts with session_col
    cache_dir: str | None = None
    impressions: str = "auto"  # XING impressions.csv path | auto (next to a XING log, if present) | none
    # models
    model: str = "hiertcn"
    models: list[str] | None = None  # for compare; None = every registered model
    model_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss: str = "softmax"  # softmax | sampled_softmax | bpr | hinge (hiertcn.losses)
    # optimisation
    epochs: int = 10
    max_time: float | None = None  # seconds of training per model
    lr: float = 1e-3
    lr_decay: float = 1.0  # multiply the learning rate by this after every epoch
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    precision: str = "fp32"  # fp32 | bf16: the training forward and loss under bf16 autocast (evaluation: fp32)
    validate: bool = True  # score VALID sessions after each epoch (early stopping, best weights, curves)
    patience: int = 3  # stop after this many epochs without a better validation mrr (0 = never)
    # batching
    n_queues: int = 32
    sessions_per_lane: int = 10
    max_session_len: int = 20
    truncate: bool = False
    batch_users: int = 32  # users per whole-user batch (the models that carry no state)
    prefetch: int = 4  # batches built ahead on the loader thread
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = torch's default); 1 avoids thrashing on a busy machine
    checkpoint_every: int = 200  # optimizer steps between mid-epoch checkpoints (0 = epoch ends only)
    out: str = "runs/hiertcn"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {self.time_unit!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "n_queues", "sessions_per_lane", "max_session_len", "batch_users", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.session_gap is not None and self.session_gap < 1:
            raise ValueError(f"session_gap must be >= 1 (or unset), got {self.session_gap!r}")
        for name in ("patience", "checkpoint_every", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.seed >= 2**32:  # numpy's seed range
            raise ValueError(f"seed must be below 2**32, got {self.seed!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        for name in ("weight_decay", "clip_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be > 0 seconds, got {self.max_time!r}")
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        if isinstance(self.column_names, str):  # "" clears it; every name kept, so an empty one is read_log's error
            self.column_names = [n.strip() for n in self.column_names.split(",")] if self.column_names.strip() else None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Config:
        return cls().updated(values, source=source)

    def updated(self, values: dict[str, Any], *, source: str = "config") -> Config:
        """A copy with ``values`` applied; unknown keys raise ``ValueError`` naming them."""
        unknown = sorted(set(values) - set(self.keys()))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; valid keys: {', '.join(self.keys())}"
            )
        hints = typing.get_type_hints(type(self))
        values = {key: _typed(key, value, hints[key], source) for key, value in values.items()}
        model_config = values.get("model_config", {})
        if not isinstance(model_config, dict) or not all(isinstance(v, dict) for v in model_config.values()):
            raise ValueError(f"model_config in {source} must map model names to tables of keyword arguments")
        from .models import MODEL_NAMES  # (imports torch: only here)

        unknown = sorted(set(model_config) - set(MODEL_NAMES))
        if unknown:  # a misspelt table would leave its model at the defaults without a word
            raise ValueError(f"model_config in {source} names unknown model(s) {', '.join(map(repr, unknown))}; "
                             f"models: {', '.join(MODEL_NAMES)}")  # fmt: skip
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_list_of(value: Any, hint: Any) -> bool:
    """A comma-separated string, or a list whose elements have the hint's element type."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, typing.get_args(hint)) for v in value))


def _typed(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` as the field's type: ints (integral floats too), floats (numbers, or text such as YAML's
    ``1e-3``), bools, strings, lists (a comma-separated string too) and tables; else a ValueError naming it."""
    choices = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in choices:
        return None
    for choice in choices:
        kind = typing.get_origin(choice) or choice
        if isinstance(value, bool):
            if kind is bool:
                return value
        elif kind is int and isinstance(value, (int, float)) and float(value).is_integer():
            return int(value)
        elif kind is float and isinstance(value, (int, float)):
            return float(value)
        elif kind is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif (kind in (str, dict) and isinstance(value, kind)) or (kind is list and _is_list_of(value, choice)):
            return value
    wanted = " or ".join("none" if c is type(None) else getattr(typing.get_origin(c) or c, "__name__", str(c))
                         for c in choices)  # fmt: skip
    raise ValueError(f"{key} in {source} must be {wanted}, got {value!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value table of a ``.toml``, ``.yaml`` or ``.yml`` file (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        with path.open("rb") as f:
            try:
                values = tomllib.load(f)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config file {path}: {err}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        with path.open() as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:  # not a ValueError: it would escape as a traceback
                raise ValueError(f"config file {path}: {err}") from None
    else:
        raise ValueError(f"config file {path} must end in .toml, .yaml or .yml")
    if not isinstance(values, dict):
        # ValueError, not TypeError: a malformed file is bad input, reported like every other config error.
        raise ValueError(f"config file {path} must hold a table of keys, got {type(values).__name__}")  # noqa: TRY004
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file at ``path`` (if any), then ``overrides`` (flags given on the command line)."""
    config = Config()
    if path is not None:
        config = config.updated(read_config_file(path), source=str(path))
    return config.updated(overrides or {}, source="command-line flags")
