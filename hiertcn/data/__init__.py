"""Data: readers, preprocessing presets, the synthetic XING log, packing baselines, splits and the cache."""
