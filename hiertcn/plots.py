"""PNG plots of a comparison: training curves and metric bars per model (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

BAR_METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrr@20")


def plot_training_curves(histories: dict[str, list[dict]], curves: dict[str, list], path: str | Path) -> Path:
    """Training loss per step (smoothed) and validation mrr per epoch, one line per model."""
    validated = any(h and "val_mrr" in h[0] for h in histories.values())
    fig, axes = plt.subplots(1, 1 + validated, figsize=(11 if validated else 6, 4), squeeze=False)
    loss_ax, mrr_ax = axes[0, 0], axes[0, -1]
    for name, curve in curves.items():
        if curve:
            steps, losses = zip(*curve)
            loss_ax.plot(steps, _smooth(losses), label=name)
    for name, history in histories.items():
        if history and "val_mrr" in history[0]:
            mrr_ax.plot([row["epoch"] for row in history], [row["val_mrr"] for row in history], marker="o", label=name)
    loss_ax.set(xlabel="step", ylabel="train loss (moving average)", title="Training loss")
    if validated:
        mrr_ax.set(xlabel="epoch", ylabel="validation MRR", title="Validation MRR")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def _smooth(values, window: int = 20) -> list[float]:
    """Trailing moving average (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metric_bars(metrics: dict[str, dict[str, float]], path: str | Path, keys=BAR_METRICS) -> Path:
    """Grouped bars: one group per metric, one bar per model."""
    names = list(metrics)
    keys = [k for k in keys if all(k in m for m in metrics.values())]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys)), 4))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [metrics[name][k] for k in keys], width, label=name)
    ax.set_xticks(range(len(keys)), keys)
    ax.set(ylabel="value", title="Test metrics (full-catalogue ranking)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
