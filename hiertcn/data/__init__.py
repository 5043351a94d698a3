"""Data: packed interaction logs, dataset splits and the prepared-dataset cache."""
