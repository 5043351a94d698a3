"""HierTCN and the paper's baselines behind one interface, built by name with ``build_model``."""

from __future__ import annotations

import inspect

from .base import Recommender
from .baselines import HRNN, FlatTCN, GRU4Rec, MovingAverage
from .hiertcn import HierTCN

MODELS: dict[str, type[Recommender]] = {
    "hiertcn": HierTCN,
    "moving_average": MovingAverage,
    "gru4rec": GRU4Rec,
    "flat_tcn": FlatTCN,
    "hrnn": HRNN,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str, n_items: int, **config) -> Recommender:
    """Build the model ``name`` (one of MODEL_NAMES) for ``n_items`` items; ``config`` are its keyword options."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    cls = MODELS[name]
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind == p.KEYWORD_ONLY}  # fmt: skip
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise TypeError(f"{name} got unknown config key(s) {unknown}; accepted: {list(defaults)}")
    for key, value in config.items():
        _check_option(name, key, value, defaults[key])
    return cls(n_items, **config)


def _check_option(model: str, key: str, value, default) -> None:
    """A config value of the default's kind: sizes positive ints, dropouts in [0, 1), flags bools, numbers numbers
    (a config file's typo fails here by name, not as a tensor-shape error inside the constructor)."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif is_int(default):
        ok, wanted = is_int(value) and value >= 1, "a positive int"
    elif isinstance(default, float) and "dropout" in key:
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1, "in [0, 1)"
    elif isinstance(default, float):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(is_int(v) and v >= 1 for v in value)
        wanted = "a non-empty list of positive ints"
    else:
        ok, wanted = isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"{model} option {key} must be {wanted}, got {value!r}")


__all__ = ["HRNN", "MODEL_NAMES", "FlatTCN", "GRU4Rec", "HierTCN", "MovingAverage", "Recommender", "build_model"]
