"""``prepare_dataset``: source file -> read -> preset -> pack_sessions -> split, cached on disk.

The cache entry is keyed by the source file's content and every parameter
(``cache_key``) and built atomically (``build_cached``), so a failed build
(bad rows, a preset that filters everything out) leaves nothing behind and a
changed file or parameter never returns a stale dataset.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from hiertcn_kernels._io import always, atomic_directory
from hiertcn_kernels.packing import pack_sessions

from .cache import build_cached, cache_key, fingerprint
from .impressions import MAX_IMPRESSIONS, map_impressions
from .presets import PRESETS, apply_preset
from .readers import TIME_UNITS, detect_format, format_session_column, read_impressions, read_log
from .splits import Dataset, split_by_time, split_by_user, split_last_session
from .synthetic import generate_xing

SPLITS = ("last-session", "user", "time")
DEFAULT_CACHE_DIR = Path(os.environ.get("HIERTCN_CACHE_DIR", Path.home() / ".cache" / "hiertcn"))
SYNTHETIC_DIR = "synthetic-xing"  # the embedded default log, inside the cache dir
TIME_SPLIT_QUANTILES = (0.8, 0.9)  # split="time": sessions starting after these quantiles of start times
SHOWN_SKIPPED_LINES = 100  # info keeps the count of skipped bad rows and the first line numbers
DEFAULT_SESSION_GAP = 1800  # seconds: the HierTCN release's XING rule (dt // 1800 > 0)


def default_preset(format: str) -> str:
    """``hiertcn-xing`` for XING logs (the official preprocessing), ``none`` for every other format."""
    return "hiertcn-xing" if format == "xing" else "none"


def synthetic_default(cache_dir: str | Path | None = None) -> Path:
    """Path of the embedded default log (``generate_xing`` defaults, seed 0), generated into the cache once."""
    target = Path(cache_dir or DEFAULT_CACHE_DIR) / SYNTHETIC_DIR
    if not (target / "interactions.csv").is_file():
        with atomic_directory(target, replaces=always) as tmp:  # inside the cache
            generate_xing(tmp, seed=0)
    return target / "interactions.csv"


def resolve_session_gap(session_gap: int | None, session_col: str | None) -> int | None:
    """The gap (seconds) at which sessions are cut, None for none: ``session_gap`` when given, else
    ``DEFAULT_SESSION_GAP``, or None when ``session_col`` names the log's own sessions (kept as they are)."""
    if session_gap is not None:
        return session_gap
    return None if session_col is not None else DEFAULT_SESSION_GAP


def resolve_impressions(impressions, path: Path, fmt: str) -> Path | None:
    """The impressions file to use: ``"auto"`` is ``impressions.csv`` next to a XING log when it exists,
    ``"none"`` / None none, anything else a path that must exist."""
    if impressions is None or impressions == "none":
        return None
    if impressions == "auto":
        candidate = path.parent / "impressions.csv"
        return candidate if fmt == "xing" and candidate.is_file() else None
    impressions = Path(impressions)
    if not impressions.is_file():
        raise FileNotFoundError(f"impressions file {impressions} does not exist")
    return impressions


def prepare_dataset(
    path: str | Path | None = None,
    *,
    format: str | None = None,
    preset: str | None = None,
    preset_until_stable: bool = False,
    split: str = "last-session",
    cache_dir: str | Path | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    session_col: str | None = None,
    column_names: list[str] | None = None,
    sep: str | None = None,
    time_unit: str = "auto",
    skip_bad_rows: bool = False,
    session_gap: int | None = None,
    seed: int = 0,
    impressions: str | Path | None = "auto",
    max_impressions: int = MAX_IMPRESSIONS,
) -> tuple[Dataset, Path]:
    """Read, filter, pack and split an interaction file; returns the Dataset and its cache directory.

    ``path=None`` uses the embedded synthetic XING log (generated into ``cache_dir`` on first use).
    ``format``: ``xing | csv | parquet | movielens | recbole``, detected when None. ``preset``:
    ``hiertcn-xing | hrnn-xing | none``; None means ``hiertcn-xing`` for XING and ``none`` otherwise.
    ``preset_until_stable``: repeat the preset's count filters until nothing changes (the published
    code filters once; see :mod:`hiertcn.data.presets`).
    ``split``: ``last-session`` (per user the last session is TEST, the one before VALID), ``user``
    (users 80/10/10, shuffled by ``seed``) or ``time`` (sessions starting after the 80% / 90% quantiles
    of session start times are VALID / TEST). Reader options (``user_col`` ... ``skip_bad_rows``) are
    those of :func:`hiertcn.data.read_log` (``column_names``: a CSV/TSV without a header line); ``session_gap`` (seconds) is the session rule of
    ``pack_sessions`` and the presets: None (the default) means 1800 s, or no gap cuts when ``session_col``
    gives the sessions, as does a RecBole ``session_id`` column (:func:`resolve_session_gap`;
    ``info["session_gap"]`` records the result). ``cache_dir``
    defaults to ``$HIERTCN_CACHE_DIR`` or ``~/.cache/hiertcn``.

    ``impressions``: a XING ``impressions.csv`` (``user_id year week items``), ``"auto"`` (the
    default: ``impressions.csv`` next to a XING log, if there is one) or ``"none"``. With one, the
    Dataset holds each interaction's impressed items (``dataset.impressions``): the list of its user
    and ISO week, mapped to dense item indices, at most ``max_impressions`` per interaction (see
    :mod:`hiertcn.data.impressions`). The log's user and item ids must then be integers.

    ``dataset.info`` records the source, the parameters, the preset report (``info["preset_report"]``:
    what each filter removed), the number of skipped bad rows and their first line numbers, and ``item_names``/``user_names`` when the raw ids were
    strings (``csr.item_ids[i]`` is then an index into ``item_names``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")
    if session_gap is not None and (
        isinstance(session_gap, bool) or not isinstance(session_gap, (int, np.integer)) or session_gap <= 0
    ):
        raise ValueError(f"session_gap must be a positive int (seconds) or None, got {session_gap!r}")
    cache_root = Path(cache_dir or DEFAULT_CACHE_DIR)
    if path is None:
        path, format = synthetic_default(cache_root), format or "xing"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} does not exist or is not a file")
    fmt = format or detect_format(path)
    session_gap = resolve_session_gap(session_gap, session_col or format_session_column(path, fmt))
    preset = preset or default_preset(fmt)
    imp_path = resolve_impressions(impressions, path, fmt)
    if isinstance(max_impressions, bool) or not isinstance(max_impressions, (int, np.integer)) or (
        max_impressions < 1
    ):
        raise ValueError(f"max_impressions must be a positive int, got {max_impressions!r}")
    reader_options = {
        "user_col": user_col,
        "item_col": item_col,
        "time_col": time_col,
        "session_col": session_col,
        "sep": sep,
        "time_unit": time_unit,
        "skip_bad_rows": skip_bad_rows,
    }
    if column_names is not None:  # (only then: the prepared datasets cached before the option keep their keys)
        reader_options["column_names"] = column_names
    params = {
        "format": fmt,
        "preset": preset,
        "preset_until_stable": bool(preset_until_stable),
        "split": split,
        "session_gap": None if session_gap is None else int(session_gap),  # unset: 1800, the key cached before
        "seed": int(seed),
    }
    imp_params = {"impressions": None}
    if imp_path is not None:
        imp_params = {"impressions": fingerprint(imp_path), "max_impressions": int(max_impressions)}
    key = cache_key(path, **params, **reader_options, **imp_params)

    def build(out: Path) -> None:
        log = read_log(path, fmt, **reader_options)
        gap = math.inf if session_gap is None else session_gap
        log, report = apply_preset(log, preset, session_gap=gap, until_stable=preset_until_stable)
        # hrnn-xing fixed its sessions (log.session) before filtering; a removed row must not split one.
        pack_gap = math.inf if preset == "hrnn-xing" else gap
        csr = pack_sessions(log.user, log.item, log.timestamp, session_gap=pack_gap, session=log.session)
        dataset = _split(csr, split, seed)
        if imp_path is not None:
            if log.user_names is not None or log.item_names is not None:
                raise ValueError(
                    f"impressions ({imp_path}) need integer user and item ids, but {path} has string ids"
                )
            imp_ptr, imp_item = map_impressions(dataset.csr, read_impressions(imp_path), int(max_impressions))
            dataset = replace(dataset, imp_ptr=imp_ptr, imp_item=imp_item)
            dataset.info["impressions"] = str(imp_path.resolve())
            dataset.info["impressions_per_interaction"] = len(imp_item) / max(len(imp_ptr) - 1, 1)
        dataset.info.update(
            source=str(path.resolve()),
            **params,
            skipped_rows=len(log.skipped_lines),
            skipped_lines_head=[int(n) for n in log.skipped_lines[:SHOWN_SKIPPED_LINES]],
            preset_report=report.as_dict(),
        )
        if log.item_names is not None:
            dataset.info["item_names"] = log.item_names.tolist()
        if log.user_names is not None:
            dataset.info["user_names"] = log.user_names.tolist()
        dataset.save(out / "dataset")

    entry = build_cached(cache_root, key, build)
    return Dataset.load(entry / "dataset"), entry


def _split(csr, split: str, seed: int) -> Dataset:
    if split == "user":
        return split_by_user(csr, seed=seed)
    if split == "last-session":
        return split_last_session(csr)
    starts = csr.timestamp[csr.session_ptr[:-1]]
    valid_cutoff, cutoff = (int(q) for q in np.quantile(starts, TIME_SPLIT_QUANTILES, method="higher"))
    return split_by_time(csr, cutoff=cutoff, valid_cutoff=valid_cutoff)
