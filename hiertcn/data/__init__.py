"""Data: readers, preprocessing presets, the synthetic XING log, packing, splits, the cache, and
``prepare_dataset`` which chains them."""

from hiertcn_kernels.packing import SessionCSR, pack_sessions

from .cache import build_cached, cache_key
from .log import Impressions, InteractionLog
from .prepare import prepare_dataset
from .presets import PRESETS, PresetReport, apply_preset
from .readers import FORMATS, BadRowsError, detect_format, read_impressions, read_log
from .splits import TEST, TRAIN, VALID, Dataset, split_by_time, split_by_user, split_last_session
from .synthetic import generate_xing

__all__ = [
    "FORMATS",
    "PRESETS",
    "TEST",
    "TRAIN",
    "VALID",
    "BadRowsError",
    "Dataset",
    "Impressions",
    "InteractionLog",
    "PresetReport",
    "SessionCSR",
    "apply_preset",
    "build_cached",
    "cache_key",
    "detect_format",
    "generate_xing",
    "pack_sessions",
    "prepare_dataset",
    "read_impressions",
    "read_log",
    "split_by_time",
    "split_by_user",
    "split_last_session",
]
