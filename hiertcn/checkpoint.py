"""Checkpoints: atomic writes, a format version, and clear errors on bad files.

A checkpoint is one ``torch.save`` dict: ``format_version``, ``hiertcn_version``,
the run ``config``, the model's ``model_name``/``model_config``/``n_items`` (enough
to rebuild it with ``build_model``), the ``catalogue`` fingerprint (which item each
output row is), the ``data`` fingerprint (the prepared log it trains on), its ``model`` state dict, and, for resuming,
``optimizer``, ``scheduler``, the batcher position, the carried lane state and
the RNG states. It is written to a temporary file in the same folder and renamed
into place, so a run killed while saving leaves the previous checkpoint intact; the run's
JSON files (``metrics.json``, ``history.json``, the benchmarks') are written the same way
(:func:`write_json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from . import __version__

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used (corrupt, foreign, other format version)."""


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file object for ``path`` whose content replaces ``path`` only once written whole: it is written
    to a hidden temporary beside it and renamed into place, so a run killed while writing leaves the
    previous file (or none), never a truncated one. The file's mode follows the umask, as ``open``'s does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any, **dumps_options) -> Path:
    """``obj`` as JSON into ``path``, atomically (:func:`atomic_file`)."""
    text = json.dumps(obj, **dumps_options)  # before the file: an object JSON refuses leaves the old file
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format_version": FORMAT_VERSION, "hiertcn_version": __version__, **payload}
    with atomic_file(path) as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run folder: name the checkpoints in it
        inside = sorted(p.name for p in path.glob("*.pt"))
        hint = f"one of its checkpoints: {', '.join(str(path / name) for name in inside)}" if inside else \
            "a checkpoint file (a run folder holds best.pt and last.pt)"  # fmt: skip
        raise IsADirectoryError(f"checkpoint {path} is a folder; pass {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only=False: the payload holds numpy RNG state and plain Python containers we wrote ourselves.
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except PermissionError:
        raise
    # OSError: torch's zip reader answers a truncated file with EINVAL
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {err}") from err
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path} is not a hiertcn checkpoint (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['format_version']} "
            f"(written by hiertcn {payload.get('hiertcn_version')}); this hiertcn {__version__} reads version "
            f"{FORMAT_VERSION}"
        )
    return payload


def catalogue_fingerprint(dataset) -> int:
    """CRC32 of the dataset's item ids (and names, for string ids): which item each output row scores."""
    crc = zlib.crc32(np.ascontiguousarray(dataset.csr.item_ids, dtype=np.int64).tobytes())
    names = getattr(dataset, "info", {}).get("item_names")
    return crc if names is None else zlib.crc32("\n".join(names).encode(), crc)


def data_fingerprint(dataset) -> int:
    """CRC32 of the prepared log a run trains on: its sessions, items, times, split roles and impressions."""
    csr = dataset.csr
    parts = [csr.user_ptr, csr.session_ptr, csr.item, csr.timestamp, dataset.role, *(getattr(dataset, "impressions", None) or ())]
    crc = 0
    for part in parts:
        crc = zlib.crc32(np.ascontiguousarray(part, dtype=np.int64).tobytes(), crc)  # whatever dtype it was stored in
    return crc


def check_same_data(payload: dict[str, Any], dataset, catalogue: int, data: int, path) -> None:
    """A resumed run must train on the data it started on: raise ``ValueError`` naming what changed."""
    n_items = dataset.csr.n_items
    if payload.get("n_items", n_items) != n_items or payload.get("catalogue", catalogue) != catalogue:
        raise ValueError(
            f"--resume: {path} was trained on a catalogue of {payload.get('n_items')} items, but the data now has "
            f"{n_items} (or other item ids): the log changed since the run started; start a new run (another --out)"
        )
    if payload.get("data", data) != data:  # older checkpoints did not record it
        raise ValueError(
            f"--resume: the prepared log differs from the one {path} was trained on (same items, other "
            "interactions, times or split): the log changed since the run started; start a new run (another --out)"
        )


def saved_model_config(payload: dict[str, Any]) -> dict[str, Any]:
    """The options a checkpoint's model was built with: its ``model_config`` plus what older versions left to
    a default that has since changed."""
    options = dict(payload.get("model_config") or {})
    if payload.get("model_name") == "hiertcn" and "agg_dense.weight" in payload.get("model", {}):
        options.setdefault("agg_dense", "separate")  # saved before the release's AGG ("shared") was the default
    return options


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was written for and load its weights (in eval mode)."""
    from .models import build_model

    payload = load_checkpoint(path, map_location=map_location)
    missing = [k for k in ("model_name", "n_items", "model") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it holds no model")
    if payload["model_name"] is None:
        raise CheckpointError(
            f"checkpoint {path} holds a {payload.get('model_class', 'model')} trained by fit() without model_name "
            "and model_config, so it cannot be rebuilt: build the model yourself and load_state_dict(payload['model']), "
            "or pass both to fit()"
        )
    model = build_model(payload["model_name"], n_items=payload["n_items"], **saved_model_config(payload))
    model.load_state_dict(payload["model"])
    return model.to(map_location).eval(), payload
