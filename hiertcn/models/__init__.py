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
    accepted = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise TypeError(f"{name} got unknown config key(s) {unknown}; accepted: {accepted}")
    return cls(n_items, **config)


__all__ = ["HRNN", "MODEL_NAMES", "FlatTCN", "GRU4Rec", "HierTCN", "MovingAverage", "Recommender", "build_model"]
