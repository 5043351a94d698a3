"""A synthetic job-click log in the XING RecSys 2016 format, with planted structure.

``generate_xing(out_dir)`` writes ``interactions.csv`` (tab-separated, header
``user_id item_id interaction_type created_at``, unix seconds),
``impressions.csv`` (``user_id year week items``, items comma-separated) and
``truth.npz`` (the planted ground truth, for tests and analysis). It is the
embedded default data set of the demo, the tests and the benchmarks.

What it plants (everything is drawn from ``numpy.random.default_rng(seed)``,
so the files are a deterministic function of the arguments):

- **Topics and items.** Items are split evenly into ``n_topics`` topics.
  Topic popularity is Zipf(``topic_zipf``) and item popularity inside a topic
  is Zipf(``item_zipf``), so item counts are long-tailed. Raw ids are random
  sparse integers that carry no topic information.
- **Item neighbourhoods.** Every item has ``n_neighbours`` successor items in
  its own topic, drawn by popularity. Within a session the user walks this
  graph (the short-term drift), so the next item depends on the current one.
- **Long-term interests.** Each user has 2..4 stable topics (Dirichlet
  weights) plus one emerging topic whose weight grows linearly over the
  user's sessions up to ``drift`` (slow interest drift).
- **Sessions.** Each session picks ONE topic: from the user's interests, or
  with probability ``p_explore`` any topic by popularity. Its first item is
  drawn by popularity inside that topic and the rest follow the walk.
  Lengths are log-normal (median ``session_len_median``, clipped to 1..50),
  sessions per user log-normal (median ``sessions_median``, clipped 2..200).
- **Noise and repeats.** At each later step: with ``p_noise`` a click on a
  random popular item of any topic, with ``p_delete`` a type-4 delete of a
  random item (the presets drop type 4), with ``p_repeat`` a bookmark (2) or
  reply (3) on the previous walk item (repeat consumption); otherwise a click
  (1) on the next walk item. Noise and deletes do not move the walk.
- **Time.** Gaps inside a session are 1 + Exp(``click_gap_mean``) seconds,
  capped below 1800; gaps between sessions are 1800 + Exp(``session_gap_mean``)
  seconds, so the 1800 s gap rule recovers the planted sessions exactly.
- **Impressions.** For each (user, ISO year, week) with activity:
  ``n_impressed`` items drawn from the user's stable topics.

Consequence: the first item of a session is predictable only from long-term
history (which topics this user picks, and the emerging one), and later items
mostly from the session's own last item (the walk). A long-term average
cannot follow the walk and a flat short-term model cannot know a new
session's topic, so a hierarchical model has something to win.

``truth.npz`` holds ``item_id`` (I,), ``item_topic`` (I,), ``user_id`` (U,) and
``user_topics`` (U, 5): stable topics in columns 0..3 (-1 where the user has
fewer), the emerging topic in column 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .._ragged import offsets
from .impressions import iso_year_week

XING_START = 1446336000  # 2015-11-01 00:00:00 UTC, around where the real XING log starts
_STABLE_SLOTS = 4


@dataclass(frozen=True)
class XingFiles:
    interactions: Path
    impressions: Path | None
    truth: Path


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over ``n`` entries in a random rank order (normalised)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(w / w.sum())


def _sample_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row ``r``: the first column whose cumulative weight ``cum[r]`` exceeds ``u[r] * cum[r, -1]``."""
    return (cum < (u * cum[:, -1])[:, None]).sum(axis=1)


def _distinct_topics(
    topic_pop: np.ndarray, n_users: int, n_pick: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_pick`` distinct topics per user, by popularity: draw with replacement and redraw rows with repeats
    (memory O(users), unlike a users x topics Gumbel top-k); rows still stuck get the exact Gumbel top-k."""
    cum = np.cumsum(topic_pop)

    def draw(rows: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cum, rng.random((rows, n_pick))), len(cum) - 1)

    picked = draw(n_users)
    for _ in range(20):
        ordered = np.sort(picked, axis=1)
        repeats = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if len(repeats) == 0:
            return picked
        picked[repeats] = draw(len(repeats))
    keys = np.log(topic_pop)[None, :] + rng.gumbel(size=(len(repeats), len(topic_pop)))
    picked[repeats] = np.argsort(-keys, axis=1)[:, :n_pick]
    return picked


def _write_tsv(table: pa.Table, path: Path) -> None:
    """Tab-separated with a bare header line, as in the XING files (pyarrow would quote the header)."""
    with open(path, "wb") as f:
        f.write(("\t".join(table.column_names) + "\n").encode())
        pacsv.write_csv(
            table,
            f,
            write_options=pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False),
        )


def generate_xing(
    out_dir: str | Path,
    *,
    n_users: int = 3000,
    n_items: int = 2000,
    n_topics: int = 60,
    seed: int = 0,
    sessions_median: float = 8.0,
    session_len_median: float = 4.0,
    n_neighbours: int = 4,
    topic_zipf: float = 0.4,
    item_zipf: float = 0.5,
    p_explore: float = 0.1,
    drift: float = 0.5,
    p_noise: float = 0.05,
    p_delete: float = 0.04,
    p_repeat: float = 0.1,
    click_gap_mean: float = 60.0,
    session_gap_mean: float = 86400.0,
    impressions: bool = True,
    n_impressed: int = 10,
) -> XingFiles:
    """Write a synthetic XING log into ``out_dir`` (created if missing); see the module docstring."""
    counts = (("n_users", n_users), ("n_items", n_items), ("n_topics", n_topics), ("n_neighbours", n_neighbours),
              ("n_impressed", n_impressed))  # fmt: skip
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if n_topics < 2:
        raise ValueError(f"n_topics must be >= 2 (a stable and an emerging topic), got {n_topics}")
    if n_items < n_topics:
        raise ValueError(f"n_items ({n_items}) must be >= n_topics ({n_topics})")
    for name, p in (
        ("p_explore", p_explore),
        ("p_noise", p_noise),
        ("p_delete", p_delete),
        ("p_repeat", p_repeat),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    for name, value in (
        ("sessions_median", sessions_median),
        ("session_len_median", session_len_median),
        ("click_gap_mean", click_gap_mean),
        ("session_gap_mean", session_gap_mean),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be in [0, 1], got {drift}")
    if p_noise + p_delete + p_repeat > 1.0:
        raise ValueError("p_noise + p_delete + p_repeat must be <= 1")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Items, grouped by topic internally (item index i has topic item_topic[i]).
    item_topic = np.sort(np.arange(n_items) % n_topics)
    topic_start = np.searchsorted(item_topic, np.arange(n_topics + 1))
    topic_pop = _zipf_weights(n_topics, topic_zipf, rng)
    within = np.concatenate(
        [_zipf_weights(topic_start[t + 1] - topic_start[t], item_zipf, rng) for t in range(n_topics)]
    )
    item_pop = within * topic_pop[item_topic]
    item_pop /= item_pop.sum()
    # Searching topic + within-topic cumulative share finds an item of a given topic by popularity.
    within_cum = item_topic + (
        np.cumsum(within)
        - np.repeat(np.cumsum(within)[topic_start[:-1]] - within[topic_start[:-1]], np.diff(topic_start))
    )
    neighbours = np.empty((n_items, n_neighbours), dtype=np.int64)
    for t in range(n_topics):
        lo, hi = topic_start[t], topic_start[t + 1]
        neighbours[lo:hi] = lo + rng.choice(hi - lo, size=(hi - lo, n_neighbours), p=within[lo:hi])

    def item_in_topic(topic: np.ndarray) -> np.ndarray:
        key = topic + rng.random(len(topic)) * (1 - 1e-12)
        return np.minimum(np.searchsorted(within_cum, key, side="right"), topic_start[topic + 1] - 1)

    def popular_items(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(np.cumsum(item_pop), rng.random(n)), n_items - 1)

    # Users: 2..4 stable topics and an emerging one, distinct, drawn by popularity.
    n_pick = min(_STABLE_SLOTS + 1, n_topics)
    picked = _distinct_topics(topic_pop, n_users, n_pick, rng)
    user_topics = np.full((n_users, _STABLE_SLOTS + 1), -1, dtype=np.int64)
    user_topics[:, : n_pick - 1] = picked[:, : n_pick - 1]
    user_topics[:, _STABLE_SLOTS] = picked[:, n_pick - 1]
    n_stable = np.minimum(rng.integers(2, _STABLE_SLOTS + 1, size=n_users), n_pick - 1)
    stable_w = rng.gamma(1.0, size=(n_users, _STABLE_SLOTS)) * (
        np.arange(_STABLE_SLOTS)[None, :] < n_stable[:, None]
    )
    user_topics[:, :_STABLE_SLOTS][stable_w == 0] = -1
    stable_w /= stable_w.sum(axis=1, keepdims=True)

    # Sessions, grouped by user.
    n_sess = np.clip(np.rint(rng.lognormal(np.log(sessions_median), 0.7, n_users)), 2, 200).astype(np.int64)
    sess_user = np.repeat(np.arange(n_users), n_sess)
    first_sess = np.cumsum(n_sess) - n_sess
    sess_idx = np.arange(len(sess_user)) - first_sess[sess_user]
    progress = sess_idx / np.maximum(n_sess[sess_user] - 1, 1)
    w = np.concatenate(
        [stable_w[sess_user] * (1 - drift * progress)[:, None], (drift * progress)[:, None]], axis=1
    )
    slot = _sample_rows(np.cumsum(w, axis=1), rng.random(len(sess_user)))
    sess_topic = user_topics[sess_user, slot]
    explore = rng.random(len(sess_user)) < p_explore
    sess_topic[explore] = np.minimum(
        np.searchsorted(np.cumsum(topic_pop), rng.random(explore.sum())), n_topics - 1
    )
    sess_len = np.clip(np.rint(rng.lognormal(np.log(session_len_median), 0.8, len(sess_user))), 1, 50).astype(
        np.int64
    )

    # Events: all sessions step forward together, position by position.
    n_events = int(sess_len.sum())
    sess_ptr = offsets(sess_len)
    item = np.empty(n_events, dtype=np.int64)
    itype = np.ones(n_events, dtype=np.int8)
    walk = item_in_topic(sess_topic)
    item[sess_ptr[:-1]] = walk
    for pos in range(1, int(sess_len.max())):
        active = np.flatnonzero(sess_len > pos)
        at = sess_ptr[active] + pos
        r = rng.random(len(active))
        is_noise = r < p_noise
        is_delete = (r >= p_noise) & (r < p_noise + p_delete)
        is_repeat = (r >= p_noise + p_delete) & (r < p_noise + p_delete + p_repeat)
        is_walk = r >= p_noise + p_delete + p_repeat
        step = neighbours[walk[active[is_walk]], rng.integers(n_neighbours, size=is_walk.sum())]
        walk[active[is_walk]] = step
        item[at[is_walk]] = step
        item[at[is_repeat]] = walk[active[is_repeat]]
        itype[at[is_repeat]] = rng.integers(2, 4, size=is_repeat.sum())
        item[at[is_noise]] = popular_items(is_noise.sum())
        item[at[is_delete]] = popular_items(is_delete.sum())
        itype[at[is_delete]] = 4

    # Time: per-session offsets from click gaps, session starts from durations plus session gaps.
    click_gap = np.minimum(1 + np.rint(rng.exponential(click_gap_mean, n_events)), 1799).astype(np.int64)
    click_gap[sess_ptr[:-1]] = 0
    offset = np.cumsum(click_gap)
    offset -= np.repeat(offset[sess_ptr[:-1]], sess_len)
    duration = offset[sess_ptr[1:] - 1]
    sess_gap = 1800 + np.rint(rng.exponential(session_gap_mean, len(sess_user))).astype(np.int64)
    sess_gap[first_sess] = rng.integers(0, 14 * 86400, size=n_users)  # users join over the first two weeks
    advance = np.cumsum(sess_gap + np.concatenate([[0], duration[:-1]]))
    advance -= np.repeat(advance[first_sess] - sess_gap[first_sess], n_sess)
    created_at = XING_START + np.repeat(advance, sess_len) + offset

    user_ids = np.sort(rng.choice(10 * n_users, size=n_users, replace=False) + 1)
    item_ids = rng.choice(10 * n_items, size=n_items, replace=False) + 1
    ev_user = np.repeat(sess_user, sess_len)
    order = np.argsort(created_at, kind="stable")  # a log is written in time order
    table = pa.table(
        {
            "user_id": user_ids[ev_user[order]],
            "item_id": item_ids[item[order]],
            "interaction_type": itype[order],
            "created_at": created_at[order],
        }
    )
    inter_path = out / "interactions.csv"
    _write_tsv(table, inter_path)

    imp_path = None
    if not impressions:  # a stale file from an earlier call would be picked up as this log's (--impressions auto)
        (out / "impressions.csv").unlink(missing_ok=True)
    if impressions:
        imp_path = out / "impressions.csv"
        year, week = iso_year_week(created_at)
        key = np.unique((ev_user.astype(np.int64) * 10000 + year) * 100 + week)
        k_user, k_year, k_week = key // 1000000, (key // 100) % 10000, key % 100
        rows = np.repeat(np.arange(len(key)), n_impressed)
        slot = _sample_rows(np.cumsum(stable_w[k_user[rows]], axis=1), rng.random(len(rows)))
        shown = item_ids[item_in_topic(user_topics[k_user[rows], slot])].reshape(len(key), n_impressed)
        _write_tsv(
            pa.table(
                {
                    "user_id": user_ids[k_user],
                    "year": k_year,
                    "week": k_week,
                    "items": [",".join(map(str, r)) for r in shown.tolist()],
                }
            ),
            imp_path,
        )

    truth_path = out / "truth.npz"
    np.savez(truth_path, item_id=item_ids, item_topic=item_topic, user_id=user_ids, user_topics=user_topics)
    return XingFiles(interactions=inter_path, impressions=imp_path, truth=truth_path)
