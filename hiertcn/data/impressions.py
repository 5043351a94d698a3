"""Impressions per interaction: XING's weekly impression lists mapped onto a packed log.

XING (RecSys Challenge 2016/2017) records impressions per user and ISO calendar
week, not per click: the row ``(user_id, year, week, items)`` lists every item
shown to that user during that week. So each interaction gets the list of
(its user, the ISO year/week of its timestamp in UTC), with the raw item ids
mapped to the packed log's dense item index. Items outside the packed
catalogue (dropped by a preset, or never interacted with) are dropped from the
lists, every list is cut to its first ``max_per_event`` items (the release's
``max_impression_len`` is 20), and an interaction with no matching row gets an
empty list.

The result is ragged, aligned with ``csr.item``: interaction ``n`` was shown
``imp_item[imp_ptr[n]:imp_ptr[n+1]]``.
"""

from __future__ import annotations

import numpy as np

from .._ragged import offsets, ranges
from .log import Impressions

MAX_IMPRESSIONS = 20  # the release's max_impression_len


def iso_year_week(timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 ``(year, week)`` of unix seconds (UTC), vectorised: a week belongs to its Thursday's year."""
    days = np.asarray(timestamp, dtype=np.int64) // 86400
    thursday = (days - (days + 3) % 7 + 3).astype("datetime64[D]")  # 1970-01-01 was a Thursday
    year_start = thursday.astype("datetime64[Y]")
    week = (thursday - year_start.astype("datetime64[D]")).astype(np.int64) // 7 + 1
    return year_start.astype(np.int64) + 1970, week


def map_impressions(csr, impressions: Impressions, max_per_event: int = MAX_IMPRESSIONS):
    """``(imp_ptr (N+1,), imp_item (M,))`` int64: the impressions of every interaction of ``csr``.

    ``csr``: a :class:`~hiertcn_kernels.packing.SessionCSR` whose ``user_ids`` and
    ``item_ids`` are the raw ids the impressions file uses. Several rows for one
    (user, year, week) are concatenated in file order.
    """
    if not isinstance(impressions, Impressions):
        raise TypeError(f"impressions must be an Impressions, got {type(impressions).__name__}")
    if (
        isinstance(max_per_event, bool)
        or not isinstance(max_per_event, (int, np.integer))
        or max_per_event < 1
    ):
        raise ValueError(f"max_per_event must be a positive int, got {max_per_event!r}")
    n = csr.n_interactions
    user_ids, item_ids = np.asarray(csr.user_ids), np.asarray(csr.item_ids)
    event_row = np.repeat(np.arange(csr.n_users), np.diff(csr.session_ptr[csr.user_ptr]))
    year, week = iso_year_week(np.asarray(csr.timestamp))

    # One int64 key per (user row, ISO week), for events and impression rows alike (a sort is then cheap).
    event_week = year * 54 + week  # ISO weeks are 1..53
    first_week = int(event_week.min()) if n else 0
    n_weeks = int(event_week.max()) - first_week + 1 if n else 1
    event_key = event_row * n_weeks + (event_week - first_week)
    row_user = np.minimum(np.searchsorted(user_ids, impressions.user), max(len(user_ids) - 1, 0))
    row_week = impressions.year * 54 + impressions.week - first_week
    usable = (
        (user_ids[row_user] == impressions.user)
        & (impressions.week >= 1) & (impressions.week <= 53)
        & (row_week >= 0) & (row_week < n_weeks)
    )  # fmt: skip
    row_key = row_user * n_weeks + row_week

    # Keep the listed items of usable rows that are in the catalogue, as dense indices.
    where = np.minimum(np.searchsorted(item_ids, impressions.items), len(item_ids) - 1)
    row_of_item = np.repeat(np.arange(len(impressions)), np.diff(impressions.item_ptr))
    known = (item_ids[where] == impressions.items) & usable[row_of_item]
    row_len = np.bincount(row_of_item[known], minlength=len(impressions))
    kept = where[known]  # rows' kept items, rows still in file order

    # Group the usable rows by key; a key's list is its rows' lists in file order.
    rows = np.flatnonzero(usable)
    rows = rows[np.argsort(row_key[rows], kind="stable")]
    keys = np.unique(row_key[rows])
    row_start = offsets(row_len)[:-1][rows]
    key_items = kept[ranges(row_start, row_start + row_len[rows])]
    key_of_row = np.searchsorted(keys, row_key[rows])
    key_ptr = offsets(np.bincount(key_of_row, weights=row_len[rows], minlength=len(keys)).astype(np.int64))

    # Each event's key, by binary search.
    at = np.minimum(np.searchsorted(keys, event_key), max(len(keys) - 1, 0))
    has = keys[at] == event_key if len(keys) else np.zeros(n, dtype=bool)
    start = np.zeros(n, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    start[has] = key_ptr[at[has]]
    length[has] = np.minimum(key_ptr[at[has] + 1] - start[has], max_per_event)
    return offsets(length), key_items[ranges(start, start + length)].astype(np.int64)

