"""Data: packed interaction logs, dataset splits and the prepared-dataset cache."""

from hiertcn_kernels.packing import SessionCSR, pack_sessions

from .cache import build_cached, cache_key
from .splits import TEST, TRAIN, VALID, Dataset, split_by_time, split_by_user, split_last_session

__all__ = [
    "SessionCSR",
    "pack_sessions",
    "Dataset",
    "TRAIN",
    "VALID",
    "TEST",
    "split_by_user",
    "split_last_session",
    "split_by_time",
    "cache_key",
    "build_cached",
]
