"""PNG plots (matplotlib, Agg): training curves and metric bars of a comparison; ``hiertcn bench`` plots."""

from __future__ import annotations

import itertools
import math
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
    """Trailing moving average of the finite values among the last ``window`` (shorter at the start):
    a NaN or inf leaves a gap of at most ``window`` points instead of blanking the rest of the line."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
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


def plot_time_vs_tokens(kernel_rows: list[dict], path: str | Path) -> Path:
    """``hiertcn bench``: kernel time vs packed tokens (log-log), one panel per op, one line per implementation."""
    ops = list(dict.fromkeys(r["op"] for r in kernel_rows))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 3.8), squeeze=False)
    for ax, op in zip(axes[0], ops):
        rows = [r for r in kernel_rows if r["op"] == op]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            line = sorted((r["tokens"], r["ms"], r["role"]) for r in rows if r["impl"] == impl)
            style = "-" if line[0][2] == "candidate" else "--"
            ax.plot([t for t, _, _ in line], [ms for _, ms, _ in line], style, marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="packed tokens T", ylabel="median ms", title=op)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)


def plot_memory_vs_history(rows: list[dict], path: str | Path) -> Path:
    """``hiertcn bench``: activation memory vs events per user, HierTCN queue batch vs FlatTCN whole histories."""
    fig, ax = plt.subplots(figsize=(6, 4))
    history = [r["history"] for r in rows]
    for key, label in (("flat_tcn_whole", "FlatTCN (whole histories)"), ("hiertcn_queue", "HierTCN (queue batch)")):
        ax.plot(history, [r[f"{key}_bytes"] / 2**20 for r in rows], marker="o", label=label)
    method = rows[0]["memory_method"] if rows else ""
    ax.set(xlabel="events per user", ylabel=f"MiB ({method})", title=f"Training memory, {rows[0]['users'] if rows else 0} users")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_scaling(rows: list[dict], path: str | Path) -> Path:
    """Scaling study: epoch time and peak memory vs log size (log-log); projected points hollow, dashed."""
    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["size"])
        color = f"C{i}"
        sizes = [r["size"] for r in mine]
        for a, b in itertools.pairwise(mine):  # a segment is dashed when it reaches a projected point
            time_ax.plot([a["size"], b["size"]], [a["epoch_s"], b["epoch_s"]], color=color,
                         linestyle="--" if a["projected"] or b["projected"] else "-")  # fmt: skip
        for r in mine:
            time_ax.plot(r["size"], r["epoch_s"], "o", color=color, markerfacecolor="none" if r["projected"] else color)
        time_ax.plot([], [], "-o", color=color, label=model)
        mem_ax.plot(sizes, [max(r["peak_bytes"], 1) / 2**20 for r in mine], "-o", color=color, label=model)
    time_ax.plot([], [], "o", color="gray", markerfacecolor="none", linestyle="--", label="projected")
    time_ax.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds per epoch", title="Epoch time")
    method = rows[0]["memory_method"] if rows else ""
    mem_ax.set(xscale="log", yscale="log", xlabel="interactions", ylabel=f"peak MiB ({method})", title="Peak memory")
    for ax in (time_ax, mem_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
