"""Full-catalogue ranking metrics.

The rank of the target is ``1 + #{j != target : scores[j] >= scores[target]}``:
ties count against the target, so a model that scores everything equally
ranks every target last, never first. ``mrp`` is the mean of ``rank / I``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RECALL_CUTOFFS = (1, 5, 10, 20)
METRIC_KEYS = tuple(f"recall@{k}" for k in RECALL_CUTOFFS) + ("mrr", "mrr@20", "mrp")


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among all items, ties against the target: ``(E,)`` int64.

    Tensors, or anything ``torch.as_tensor`` takes (numpy arrays, lists)."""
    scores = torch.as_tensor(scores)
    target = torch.as_tensor(target, device=scores.device)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (E, I), got shape {tuple(scores.shape)}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    if target.dim() != 1 or target.shape[0] != scores.shape[0]:
        raise ValueError(f"target must be (E,) with E={scores.shape[0]}, got shape {tuple(target.shape)}")
    check_item_ids(scores.shape[1], target=target)
    target_score = scores.gather(1, target.long()[:, None])
    check_target_scores(target_score)
    # The target itself is counted by >=, which supplies the "1 +".
    return count_at_or_above(scores, target_score)


def check_item_ids(n_items: int, **ids: torch.Tensor) -> None:
    """Each named tensor (``target``, ``targets``, ``impressions``) holds integer item ids in ``[0, n_items)``;
    ``impressions`` may also hold the pad ``-1``. All are read to the host at once: one sync on a GPU. (A float
    or bool tensor would otherwise be truncated to ids, and an id out of range index another row or fault.)"""
    for name, values in ids.items():
        if not isinstance(values, torch.Tensor) or values.dtype == torch.bool or values.is_floating_point() or (
            values.is_complex()
        ):
            got = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
            raise TypeError(f"{name} must be an integer tensor of item ids, got {got}")
    present = {name: values for name, values in ids.items() if values.numel()}
    if not present:
        return
    bounds = torch.stack([x for v in present.values() for x in (v.min(), v.max())]).tolist()
    for name, least, most in zip(present, bounds[::2], bounds[1::2]):
        low = -1 if name == "impressions" else 0
        if least < low or most >= n_items:
            raise ValueError(f"{name} must be item ids in [{low}, {n_items}), got min {least} max {most}")


def count_at_or_above(scores: torch.Tensor, target_score: torch.Tensor) -> torch.Tensor:
    """Per row, the items scoring at least ``target_score (n, 1)``: ties and NaN scores count against the target
    (a NaN item is not known to rank lower, and ``>=`` alone would drop it and flatter the model)."""
    return ((scores >= target_score) | scores.isnan()).sum(1)


def check_target_scores(target_score: torch.Tensor) -> None:
    if bool(target_score.isnan().any()):
        raise ValueError("a target's score is NaN: the model's outputs are not finite, so nothing can be ranked")


def metrics_per_event(ranks: torch.Tensor, n_items: int) -> torch.Tensor:
    """``(E, len(METRIC_KEYS))`` float64 values of every metric for every event, columns in METRIC_KEYS order."""
    r = ranks.double()
    cols = [(r <= k).double() for k in RECALL_CUTOFFS]
    cols += [1.0 / r, torch.where(r <= 20, 1.0 / r, torch.zeros_like(r)), r / n_items]
    return torch.stack(cols, 1)


def ranking_metrics(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean of every metric in METRIC_KEYS over the events: ``scores (E, I)``, ``target (E,)`` (tensors,
    or anything ``torch.as_tensor`` takes)."""
    scores = torch.as_tensor(scores)
    if scores.dim() >= 1 and scores.shape[0] == 0:
        raise ValueError("scores must hold at least one event")
    values = metrics_per_event(target_ranks(scores, target), scores.shape[1]).mean(0)
    return dict(zip(METRIC_KEYS, values.tolist()))


class MetricAccumulator:
    """Streaming sums of the metrics, per event and per user.

    ``result()`` gives the per-event means under the plain keys (the primary
    numbers: every scored event weighs the same), the mean over users of each
    user's per-event mean under ``user/<key>`` (every user weighs the same, the
    official code's averaging), and ``n_events``, ``n_users``.

    When every ``add`` says which events open their session (``first``), the
    per-event means are also split under ``first/<key>`` (the first event of a
    session: only the long-term history can predict it) and ``later/<key>``
    (the rest: mostly the session so far), with ``n_first`` and ``n_later``.
    The official code's per-step analysis, reduced to the two cases that tell
    a hierarchical model's two levels apart.
    """

    def __init__(self, n_items: int):
        self.n_items = n_items
        self._sum = np.zeros(len(METRIC_KEYS))
        self._n_events = 0
        self._user_sums: dict[int, np.ndarray] = {}
        self._user_counts: dict[int, int] = {}
        self._first_sum = np.zeros(len(METRIC_KEYS))
        self._n_first = 0
        self._split = True  # every add so far said which events are first

    def add(
        self, ranks: torch.Tensor, users: torch.Tensor | Sequence[int],
        first: torch.Tensor | Sequence[bool] | None = None,
    ) -> None:
        """Add events with their 1-based ``ranks (E,)``, the user row of each event ``users (E,)`` and,
        optionally, whether each event is the first of its session ``first (E,)``."""
        users = torch.as_tensor(users).cpu().long()
        if users.shape != ranks.shape:
            raise ValueError(f"users must have the shape of ranks {tuple(ranks.shape)}, got {tuple(users.shape)}")
        if first is not None:
            first = torch.as_tensor(first).cpu().bool().numpy()
            if first.shape != tuple(ranks.shape):
                raise ValueError(f"first must have the shape of ranks {tuple(ranks.shape)}, got {first.shape}")
        values = metrics_per_event(ranks.cpu(), self.n_items).numpy()
        self._sum += values.sum(0)
        self._n_events += len(values)
        if first is None:
            self._split = False
        else:
            self._first_sum += values[first].sum(0)
            self._n_first += int(first.sum())
        uniq, inverse = np.unique(users.numpy(), return_inverse=True)
        sums = np.zeros((len(uniq), values.shape[1]))
        np.add.at(sums, inverse, values)
        counts = np.bincount(inverse, minlength=len(uniq))
        for u, s, c in zip(uniq.tolist(), sums, counts.tolist()):
            if u in self._user_sums:
                self._user_sums[u] += s
                self._user_counts[u] += c
            else:
                self._user_sums[u] = s
                self._user_counts[u] = c

    def result(self) -> dict[str, float]:
        if self._n_events == 0:
            raise ValueError("no events were scored")
        out = dict(zip(METRIC_KEYS, (self._sum / self._n_events).tolist()))
        per_user = np.stack([s / self._user_counts[u] for u, s in self._user_sums.items()]).mean(0)
        out.update({f"user/{k}": v for k, v in zip(METRIC_KEYS, per_user.tolist())})
        out["n_events"] = self._n_events
        out["n_users"] = len(self._user_sums)
        if self._split:
            parts = {"first": (self._first_sum, self._n_first),
                     "later": (self._sum - self._first_sum, self._n_events - self._n_first)}  # fmt: skip
            for part, (total, n) in parts.items():
                means = total / n if n else np.full(len(METRIC_KEYS), np.nan)
                out.update({f"{part}/{k}": v for k, v in zip(METRIC_KEYS, means.tolist())})
                out[f"n_{part}"] = n
        return out


# The count each prefixed mean of MetricAccumulator.result() averages over; plain keys use "n_events".
MEAN_WEIGHTS = {"user/": "n_users", "first/": "n_first", "later/": "n_later"}


def combine_results(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """One result from the ``MetricAccumulator.result()`` of disjoint sets of users (e.g. one per rank).

    Counts (``n_*``) add up; every mean is weighted by the count it averages over, parts with none of
    those events skipped, so the result equals one accumulator over all the events.
    """
    if not parts:
        raise ValueError("no results to combine")
    if any(set(p) != set(parts[0]) for p in parts):  # e.g. first/later in some parts only: no exact combination
        raise ValueError("the results to combine must have the same keys")
    out = {key: sum(p[key] for p in parts) for key in parts[0] if key.startswith("n_")}
    for key in parts[0]:
        if key in out:
            continue
        weight = next((w for prefix, w in MEAN_WEIGHTS.items() if key.startswith(prefix)), "n_events")
        counted = [p for p in parts if p[weight]]
        out[key] = sum(p[key] * p[weight] for p in counted) / out[weight] if counted else float("nan")
    return out

