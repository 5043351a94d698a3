"""Data: readers, preprocessing presets, the synthetic XING log, splits, the cache."""
