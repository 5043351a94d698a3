"""Interaction logs as CSR: users -> sessions -> interactions.

``pack_sessions`` (Numba) builds a :class:`SessionCSR` from raw arrays in any
order, without pandas and without a comparison sort of the whole log:

- users spanning at most 2N raw ids, items at most 4N, no ``session`` column
  and (time offset, item code, low user bits) fitting 63 bits (the usual
  case): ``_pack_fused``, three passes that write the outputs directly (a
  scatter of one packed uint64 per row by the high user bits into the
  timestamp output, then per bucket of users, in cache: the low user bits,
  time, decoding, session cuts); no temporaries of N rows;
- other dense users: a stable counting sort by user, then each user's rows
  sorted by time in place;
- any other ids: a stable LSD radix sort on a (user, time) key.

Both keep ties in time in input order. Peak memory, inputs included, stays
under 4x the int64 input arrays (measured in benchmarks/README.md): the radix
path holds keys and permutation plus their buffers (4N int64) and the outputs
(2N int64); the item factorisation runs after the sort buffers are freed.
Large inputs use all Numba threads, small ones one thread.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from ._io import atomic_directory, saved_with_header

PARALLEL_MIN = 1 << 17
DENSE_USERS_SPAN = 2  # counting sort by user when raw user ids span at most 2N values
INSERTION_SORT_MAX = 32
MAX_RADIX_BITS = 12  # 4096 buckets per thread: the histogram stays in L1/L2
INT64_MAX = np.iinfo(np.int64).max
FORMAT = "hiertcn.SessionCSR"
FORMAT_VERSION = 1
HEADER = "header.json"


class Count(int):
    """An int that also answers a call with itself, so ``csr.n_users`` and ``csr.n_users()`` agree."""

    def __call__(self) -> int:
        return int(self)

    def __reduce__(self):  # pickles (checkpoints, caches) as a plain int
        return int, (int(self),)


@dataclass(frozen=True, eq=False)
class SessionCSR:
    """Packed interaction log. All arrays are int64 numpy arrays.

    ``user_ptr (U+1,)`` offsets into sessions, ``session_ptr (S+1,)`` offsets into
    interactions, ``item (N,)`` dense item index ``0..I-1``, ``timestamp (N,)``,
    ``user_ids (U,)`` raw id of each user row (ascending), ``item_ids (I,)`` raw id
    of each item index (ascending). Users ascend by raw id; sessions and
    interactions by time. ``pack_sessions`` never makes an empty session or user;
    ``validate`` allows them (filters may leave them).
    """

    user_ptr: np.ndarray
    session_ptr: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    # The counts read as attributes (``csr.n_users``) or, as the design contract lists them among the
    # methods, as calls (``csr.n_users()``): both give the int.
    @property
    def n_users(self) -> Count:
        return Count(len(self.user_ptr) - 1)

    @property
    def n_sessions(self) -> Count:
        return Count(len(self.session_ptr) - 1)

    @property
    def n_interactions(self) -> Count:
        return Count(len(self.item))

    @property
    def n_items(self) -> Count:
        return Count(len(self.item_ids))

    def validate(self) -> SessionCSR:
        """Check every invariant of the layout; raise ValueError/TypeError naming the field. Returns self."""
        for f in fields(self):
            a = getattr(self, f.name)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"SessionCSR.{f.name} must be a numpy array, got {type(a).__name__}")
            if a.dtype != np.int64:
                raise TypeError(f"SessionCSR.{f.name} must be int64, got {a.dtype}")
            if a.ndim != 1:
                raise ValueError(f"SessionCSR.{f.name} must be 1-D, got shape {a.shape}")
        _check_ptr(self.user_ptr, "user_ptr", self.n_sessions, "the number of sessions")
        _check_ptr(self.session_ptr, "session_ptr", self.n_interactions, "the number of interactions")
        if len(self.timestamp) != len(self.item):
            raise ValueError(f"SessionCSR.timestamp has {len(self.timestamp)} entries but item has {len(self.item)}")
        if len(self.user_ids) != self.n_users:
            raise ValueError(f"SessionCSR.user_ids has {len(self.user_ids)} entries for {self.n_users} users")
        for name in ("user_ids", "item_ids"):
            bad = _first_not_increasing(getattr(self, name), True)
            if bad >= 0:
                raise ValueError(f"SessionCSR.{name} must be strictly ascending (violated at index {bad})")
        bad = _first_out_of_range(self.item, self.n_items)
        if bad >= 0:
            raise ValueError(
                f"SessionCSR.item[{bad}] = {self.item[bad]} is outside the item range [0, {self.n_items})"
            )
        bad = _first_time_violation(self.timestamp, self.session_ptr, self.user_ptr)
        if bad >= 0:
            raise ValueError(
                f"SessionCSR.timestamp[{bad}] = {self.timestamp[bad]} is negative or goes back in time within its user"
            )
        return self

    def save(self, path) -> Path:
        """Write a directory of raw ``.npy`` arrays plus ``header.json`` (shapes, dtypes, CRC32).

        Written into a temporary sibling and renamed into place: ``path`` is
        either absent/old or complete, never half-written. An existing ``path`` is replaced only
        if it is an earlier save or an empty directory; anything else raises ``FileExistsError``.
        Returns ``path``.
        """
        path = Path(path)
        arrays = {}
        with atomic_directory(path, replaces=saved_with_header(HEADER, FORMAT), kind="a saved SessionCSR") as tmp:
            for f in fields(self):
                a = np.ascontiguousarray(getattr(self, f.name), dtype=np.int64)
                np.save(tmp / f"{f.name}.npy", a, allow_pickle=False)
                arrays[f.name] = {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc32(a)}
            header = {"format": FORMAT, "version": FORMAT_VERSION, "arrays": arrays}
            (tmp / HEADER).write_text(json.dumps(header, indent=1))
        return path

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True) -> SessionCSR:
        """Read what ``save`` wrote, memory-mapped read-only when ``mmap``.

        Shapes and dtypes are checked against the header and the layout is
        validated; with ``verify`` (default) the CRC32 of every array is
        checked too, so a tampered file is an error even when it still looks
        like a valid layout. Raises ValueError naming the problem.
        """
        path = Path(path)
        try:
            header = json.loads((path / HEADER).read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} is not a saved SessionCSR: {HEADER} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path / HEADER} is corrupt: {e}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path / HEADER} does not describe a {FORMAT}")
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {header.get('version')}, expected {FORMAT_VERSION}")
        meta = header.get("arrays")
        names = [f.name for f in fields(cls)]
        if not isinstance(meta, dict) or sorted(meta) != sorted(names):
            raise ValueError(f"{path / HEADER} must list exactly the arrays {names}")
        arrays = {}
        for name in names:
            file = path / f"{name}.npy"
            try:
                a = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"{file} is missing, truncated or corrupt: {e}") from None
            m = meta[name]
            if list(a.shape) != m.get("shape") or a.dtype.str != m.get("dtype"):
                raise ValueError(
                    f"{file} holds {a.dtype.str} {list(a.shape)} but the header says {m.get('dtype')} {m.get('shape')}"
                )
            if verify and _crc32(a) != m.get("crc32"):
                raise ValueError(f"{file} checksum mismatch: the file was modified after it was saved")
            arrays[name] = a
        csr = cls(**arrays)
        try:
            return csr.validate()
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path} holds an invalid SessionCSR: {e}") from None


def pack_sessions(user, item, timestamp, *, session_gap=1800, session=None) -> SessionCSR:
    """Pack an interaction log into a :class:`SessionCSR`.

    ``user``, ``item``, ``timestamp`` (and ``session`` if given) are equal-length
    integer arrays in any order; raw ids may be any integers, timestamps any
    non-negative integers (seconds, or any unit ``session_gap`` is in). Rows are ordered
    by user then time, stably (ties in time keep input order). A new session
    starts where the user changes, where ``session`` changes, or where the gap
    to the user's previous interaction is ``>= session_gap`` seconds (``inf``
    disables gap cuts). Users and items are factorised to dense indices in
    ascending raw-id order.
    """
    user, item, timestamp, session, gap = checked_log(user, item, timestamp, session, session_gap)
    n, has_session = len(user), session is not None
    session = session if has_session else np.empty(0, np.int64)

    with _threads_for(n):
        user_lo, user_hi, _, _ = _min_max2(user, user, numba.get_num_threads())
        user_lo = int(user_lo)
        user_span = int(user_hi) - user_lo + 1
        if not has_session and user_span <= DENSE_USERS_SPAN * n and n < 2**31:
            csr = _pack_fused(user, item, timestamp, gap, user_lo, user_span)
            if csr is not None:
                return csr
        pack = _pack_dense_users if user_span <= DENSE_USERS_SPAN * n else _pack_radix
        item_out, ts_out, flags, user_ids = pack(user, item, timestamp, session, has_session, gap, user_lo, user_span)
        user_ptr, session_ptr = _build_ptrs(flags)
        del flags
        item_ids = _factorise_inplace(item_out)
    return SessionCSR(user_ptr, session_ptr, item_out, ts_out, user_ids, item_ids)


# ---------------------------------------------------------------- argument checks
def checked_log(user, item, timestamp, session, session_gap):
    """:func:`pack_sessions`' arguments checked: int64 ``user, item, timestamp, session`` (or None) and the gap."""
    user = _int64_array(user, "user")
    n = len(user)
    if n == 0:
        raise ValueError("the interaction log is empty (user has length 0)")
    item = _int64_array(item, "item", n)
    timestamp = _timestamp_array(timestamp, n)
    session = None if session is None else _int64_array(session, "session", n)
    return user, item, timestamp, session, _gap_threshold(session_gap)




def _int64_array(a, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has length {len(a)} but user has length {n}")
    if a.dtype == np.uint64 and len(a) and a.max() > INT64_MAX:
        raise ValueError(f"{name} has ids above the int64 range")
    return np.ascontiguousarray(a, dtype=np.int64)


def _timestamp_array(ts, n: int) -> np.ndarray:
    ts = np.asarray(ts)
    if ts.dtype.kind == "f":
        if ts.ndim == 1 and np.isnan(ts).any():
            raise ValueError(f"timestamp contains NaN (first at index {int(np.flatnonzero(np.isnan(ts))[0])})")
        raise TypeError(f"timestamp must be integer seconds, got dtype {ts.dtype}; convert with astype(np.int64)")
    if ts.dtype.kind == "M":
        raise TypeError("timestamp must be integer seconds, got datetime64; convert with "
                        "astype('datetime64[s]').astype(np.int64)")
    ts = _int64_array(ts, "timestamp", n)
    lo = ts.min()
    if lo < 0:
        raise ValueError(f"timestamp must be non-negative, got {lo} at index {int(np.argmin(ts))}")
    return ts


def _gap_threshold(session_gap) -> int:
    """Timestamps are integers, so ``diff >= gap`` is ``diff >= ceil(gap)``; inf maps past any real diff."""
    if isinstance(session_gap, bool) or not isinstance(session_gap, (int, float, np.integer, np.floating)):
        raise TypeError(f"session_gap must be a number of seconds, got {type(session_gap).__name__}")
    if not session_gap > 0:
        raise ValueError(f"session_gap must be positive, got {session_gap}")
    if math.isinf(session_gap):
        return INT64_MAX
    return min(math.ceil(session_gap), INT64_MAX)


# ---------------------------------------------------------------- sorting


@contextlib.contextmanager
def _threads_for(n: int):
    """One thread below PARALLEL_MIN rows: waking the pool costs more than small inputs save."""
    if n >= PARALLEL_MIN:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _pack_dense_users(user, item, timestamp, session, has_session, gap, user_lo, user_span):
    """Raw user ids span at most DENSE_USERS_SPAN * N values (the usual case): counting sort by user.

    A stable counting sort by user, then each user's few rows sorted by time in
    place (usually already sorted). Less memory traffic than radix passes over
    a (user, time) key.
    """
    n = len(user)
    perm = np.empty(n, np.int64)
    ts_out = np.empty(n, np.int64)
    user_start = _counting_sort_by_user(user, user_lo, user_span, timestamp, numba.get_num_threads(), perm, ts_out)
    flags = np.empty(n, np.uint8)
    _gather_and_mark_segments(user_start, perm, item, ts_out, session, has_session, gap, flags)
    user_ids = user_lo + np.flatnonzero(np.diff(user_start))
    return perm, ts_out, flags, user_ids  # perm now holds the items


def _pack_fused(user, item, timestamp, gap, user_lo, user_span):
    """Dense users, dense items, no ``session`` column (the usual case): three passes, outputs written once.

    1. per-thread histogram of the high user bits, and which item ids occur;
    2. one scatter by the high user bits of a packed uint64 per row
       ``(time offset, item code, low user bits)`` into the timestamp output's
       own memory (no temporaries of N rows);
    3. per bucket of users, in cache and in parallel: counting sort by the low
       user bits, each user's rows sorted by time (stable), decoded into the
       two outputs, sessions counted; then per bucket the pointers are filled.

    Returns None when the packed row does not fit 64 bits or item ids are sparse.
    """
    n = len(user)
    item_lo, item_hi, time_lo, time_hi = _min_max2(item, timestamp, numba.get_num_threads())
    item_span = item_hi - item_lo + 1
    if item_span > 4 * n:
        return None
    time_bits = (time_hi - time_lo).bit_length()
    user_bits = (user_span - 1).bit_length()
    low_bits = min(16, max(0, user_bits - 10))
    n_threads = numba.get_num_threads()
    counts, code = _fused_histogram(user, user_lo, user_span, low_bits, item, item_lo, item_span, n_threads)
    item_ids, n_items = _codes_from_presence(code, item_lo)
    code_bits = max(0, (n_items - 1).bit_length())
    if time_bits + code_bits + low_bits > 63:
        return None
    ts_out = _prefaulted(n)
    _fused_scatter(user, user_lo, low_bits, item, item_lo, code, code_bits, timestamp, time_lo,
                   counts, ts_out.view(np.uint64))
    del code
    item_out = _prefaulted(n)
    starts, ucount, bucket_users, bucket_sessions = _fused_buckets(counts, low_bits, code_bits, time_lo, gap,
                                                                   ts_out, item_out)
    n_users, n_sessions = _exclusive_sums(bucket_users, bucket_sessions)
    user_ptr = np.empty(n_users + 1, np.int64)
    session_ptr = _prefaulted(n_sessions + 1)  # up to N entries: numpy's huge pages, faulted on every thread
    user_ids = np.empty(n_users, np.int64)
    _fused_ptrs(starts, ucount, bucket_users, bucket_sessions, user_lo, low_bits, gap, ts_out,
                user_ptr, session_ptr, user_ids)
    return SessionCSR(user_ptr, session_ptr, item_out, ts_out, user_ids, item_ids)


def _prefaulted(n: int) -> np.ndarray:
    """``np.empty(n, int64)`` with its pages touched in order first.

    The passes below write in random order; faulting a fresh mapping in random
    order costs ~10x more than a sequential touch here (the transparent huge
    pages that numpy asks for are only found for in-order faults; when the
    kernel has none to give, the 4 KiB faults at least run on every thread).
    """
    a = np.empty(n, np.int64)
    _fill_zero(a, numba.get_num_threads())
    return a


@njit(parallel=True, cache=True)
def _fill_zero(a, n_threads):
    """Sequential zero fill, one contiguous chunk per thread (faults proceed in parallel)."""
    n = a.shape[0]
    nchunks = max(1, min(n_threads, n // 65536))
    chunk = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            a[i] = 0


@njit(parallel=True, cache=True)
def _min_max2(a, b, n_threads):
    """``(a.min(), a.max(), b.min(), b.max())`` in one parallel pass."""
    n = a.shape[0]
    nchunks = max(1, min(n_threads, n // 65536))
    chunk = (n + nchunks - 1) // nchunks
    out = np.empty((nchunks, 4), np.int64)
    for c in prange(nchunks):
        i0 = c * chunk
        a_lo = a[i0]
        a_hi = a[i0]
        b_lo = b[i0]
        b_hi = b[i0]
        for i in range(i0, min(n, i0 + chunk)):
            x = a[i]
            y = b[i]
            a_lo = min(a_lo, x)
            a_hi = max(a_hi, x)
            b_lo = min(b_lo, y)
            b_hi = max(b_hi, y)
        out[c, 0] = a_lo
        out[c, 1] = a_hi
        out[c, 2] = b_lo
        out[c, 3] = b_hi
    a_lo = out[0, 0]
    a_hi = out[0, 1]
    b_lo = out[0, 2]
    b_hi = out[0, 3]
    for c in range(1, nchunks):
        a_lo = min(a_lo, out[c, 0])
        a_hi = max(a_hi, out[c, 1])
        b_lo = min(b_lo, out[c, 2])
        b_hi = max(b_hi, out[c, 3])
    return a_lo, a_hi, b_lo, b_hi


@njit(parallel=True, cache=True)
def _fused_histogram(user, user_lo, user_span, low_bits, item, item_lo, item_span, n_threads):
    """Per-chunk counts of the high user bits (``counts[-1]`` holds the bucket totals) and item presence."""
    n = user.shape[0]
    nchunks = max(1, min(n_threads, n // 65536))
    chunk = (n + nchunks - 1) // nchunks
    n_high = ((user_span - 1) >> low_bits) + 1
    counts = np.zeros((nchunks + 1, n_high), np.int64)
    code = np.zeros(item_span, np.int32)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            counts[c, (user[i] - user_lo) >> low_bits] += 1
            r = item[i] - item_lo
            if code[r] == 0:  # read first: popular items' lines stay shared between threads
                code[r] = 1
    return counts, code


@njit(cache=True)
def _codes_from_presence(code, item_lo):
    k = 0
    for r in range(code.shape[0]):
        if code[r] != 0:
            code[r] = k
            k += 1
        else:
            code[r] = -1
    ids = np.empty(k, np.int64)
    for r in range(code.shape[0]):
        if code[r] >= 0:
            ids[code[r]] = r + item_lo
    return ids, k


@njit(parallel=True, cache=True)
def _fused_scatter(user, user_lo, low_bits, item, item_lo, code, code_bits, timestamp, time_lo, counts, out):
    """Stable scatter by high user bits of ``(time - time_lo) << (code_bits + low_bits) | code << low_bits | low``.

    Turns ``counts[:-1]`` into running offsets and ``counts[-1]`` into bucket starts.
    """
    n = user.shape[0]
    nchunks = counts.shape[0] - 1
    n_high = counts.shape[1]
    chunk = (n + nchunks - 1) // nchunks
    total = 0
    for d in range(n_high):
        counts[nchunks, d] = total
        for c in range(nchunks):
            cnt = counts[c, d]
            counts[c, d] = total
            total += cnt
    low_mask = (1 << low_bits) - 1
    sh_t = np.uint64(code_bits + low_bits)
    sh_c = np.uint64(low_bits)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            offset = user[i] - user_lo
            h = offset >> low_bits
            pos = counts[c, h]
            counts[c, h] = pos + 1
            out[pos] = ((np.uint64(timestamp[i] - time_lo) << sh_t)
                        | (np.uint64(code[item[i] - item_lo]) << sh_c) | np.uint64(offset & low_mask))


@njit(parallel=True, cache=True)
def _fused_buckets(counts, low_bits, code_bits, time_lo, gap, ts_out, item_out):
    """Per bucket of users: sort by low user bits then time, decode; count users and sessions per bucket."""
    n = ts_out.shape[0]
    nchunks = counts.shape[0] - 1
    n_high = counts.shape[1]
    starts = np.empty(n_high + 1, np.int64)
    for b in range(n_high):
        starts[b] = counts[nchunks, b]
    starts[n_high] = n
    n_low = 1 << low_bits
    low_mask = np.uint64(n_low - 1)
    code_mask = np.uint64((1 << code_bits) - 1)
    sh_c = np.uint64(low_bits)
    sh_t = np.uint64(code_bits + low_bits)
    packed = ts_out.view(np.uint64)
    ucount = np.zeros(n_high * n_low, np.int32)
    bucket_users = np.zeros(n_high + 1, np.int64)
    bucket_sessions = np.zeros(n_high + 1, np.int64)
    for b in prange(n_high):
        a = starts[b]
        e = starts[b + 1]
        if a == e:
            continue
        cursor = np.zeros(n_low, np.int64)
        for i in range(a, e):
            cursor[np.intp(packed[i] & low_mask)] += 1
        total = 0
        nu = 0
        for d in range(n_low):
            cnt = cursor[d]
            ucount[b * n_low + d] = cnt
            nu += cnt > 0
            cursor[d] = total
            total += cnt
        key = np.empty(e - a, np.uint64)
        for k in range(e - a):
            v = packed[a + k]
            d = np.intp(v & low_mask)
            pos = cursor[d]
            cursor[d] = pos + 1
            key[pos] = v >> sh_t << sh_t | ((v >> sh_c) & code_mask)  # time | code, low bits dropped
        ns = 0
        r = 0
        for d in range(n_low):
            cnt = ucount[b * n_low + d]
            if cnt == 0:
                continue
            _sort_keys_by_time(key, r, r + cnt, sh_t)
            prev = np.int64(0)
            for k in range(r, r + cnt):
                t = np.int64(key[k] >> sh_t) + time_lo
                item_out[a + k] = np.int64(key[k] & code_mask)
                ts_out[a + k] = t
                if k == r or t - prev >= gap:
                    ns += 1
                prev = t
            r += cnt
        bucket_users[b] = nu
        bucket_sessions[b] = ns
    return starts, ucount, bucket_users, bucket_sessions


@njit(cache=True)
def _exclusive_sums(bucket_users, bucket_sessions):
    n_high = bucket_users.shape[0] - 1
    n_users = 0
    n_sessions = 0
    for b in range(n_high):
        nu = bucket_users[b]
        ns = bucket_sessions[b]
        bucket_users[b] = n_users
        bucket_sessions[b] = n_sessions
        n_users += nu
        n_sessions += ns
    return n_users, n_sessions


@njit(parallel=True, cache=True)
def _fused_ptrs(starts, ucount, bucket_users, bucket_sessions, user_lo, low_bits, gap, ts_out,
                user_ptr, session_ptr, user_ids):
    """Fill the pointers and user ids, each bucket from its offsets (``_exclusive_sums``)."""
    n = ts_out.shape[0]
    n_high = starts.shape[0] - 1
    n_low = 1 << low_bits
    n_users = user_ids.shape[0]
    n_sessions = session_ptr.shape[0] - 1
    user_ptr[n_users] = n_sessions
    session_ptr[n_sessions] = n
    for b in prange(n_high):
        u = bucket_users[b]
        s = bucket_sessions[b]
        r = starts[b]
        for d in range(n_low):
            cnt = ucount[b * n_low + d]
            if cnt == 0:
                continue
            user_ids[u] = user_lo + b * n_low + d
            user_ptr[u] = s
            u += 1
            for i in range(r, r + cnt):
                if i == r or ts_out[i] - ts_out[i - 1] >= gap:
                    session_ptr[s] = i
                    s += 1
            r += cnt


@njit(cache=True)
def _sort_keys_by_time(key, a, b, sh_t):
    """Stable sort of ``key[a:b]`` by ``key >> sh_t`` (rows are in input order, so ties keep it)."""
    if b - a <= INSERTION_SORT_MAX:
        for k in range(a + 1, b):
            v = key[k]
            t = v >> sh_t
            j = k
            while j > a and (key[j - 1] >> sh_t) > t:
                key[j] = key[j - 1]
                j -= 1
            key[j] = v
        return
    for k in range(a + 1, b):
        if (key[k] >> sh_t) < (key[k - 1] >> sh_t):
            break
    else:
        return
    # Stable bottom-up merge sort: insertion-sorted runs, then merges through a buffer.
    run = INSERTION_SORT_MAX
    for lo in range(a, b, run):
        _sort_keys_by_time(key, lo, min(b, lo + run), sh_t)
    src = key[a:b]
    dst = np.empty(b - a, np.uint64)
    m = b - a
    in_key = True
    while run < m:
        for lo in range(0, m, 2 * run):
            mid = min(m, lo + run)
            hi = min(m, lo + 2 * run)
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                if (src[j] >> sh_t) < (src[i] >> sh_t):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        src, dst = dst, src
        in_key = not in_key
        run *= 2
    if not in_key:
        key[a:b] = src


def _pack_radix(user, item, timestamp, session, has_session, gap, user_lo, user_span):
    """Any raw ids: LSD radix sort on (user, time) keys."""
    n = len(user)
    keys, perm, time_bits = _sort_by_user_then_time(user, timestamp)
    item_out = np.empty(n, np.int64)
    ts_out = np.empty(n, np.int64)
    flags = np.empty(n, np.uint8)
    _gather_and_mark(keys, perm, time_bits, timestamp.min(), item, timestamp, session, has_session, gap,
                     item_out, ts_out, flags)
    del perm
    return item_out, ts_out, flags, _user_ids_from_keys(flags, keys, time_bits, user_lo)


@njit(parallel=True, cache=True)
def _counting_sort_by_user(user, user_lo, user_span, timestamp, n_threads, perm, ts_out):
    """Stable sort of rows by user, then time; returns each user's offset (``user_span + 1``,).

    Two counting passes that stay in cache: rows to ~1024 buckets by the high
    bits of the user offset (chunked per thread like ``_radix_pass``), then
    each bucket, in parallel, by the low bits through a small scratch copy,
    and each user's rows by time while they are still in cache.
    """
    n = user.shape[0]
    user_bits = 0
    while (user_span - 1) >> user_bits:
        user_bits += 1
    low_bits = min(16, max(0, user_bits - 10))
    low_mask = (1 << low_bits) - 1
    n_high = ((user_span - 1) >> low_bits) + 1
    nchunks = max(1, min(n_threads, n // 65536))
    chunk = (n + nchunks - 1) // nchunks
    counts = np.zeros((nchunks, n_high), np.int64)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            counts[c, (user[i] - user_lo) >> low_bits] += 1
    high_start = np.empty(n_high + 1, np.int64)
    total = 0
    for d in range(n_high):
        high_start[d] = total
        for c in range(nchunks):
            cnt = counts[c, d]
            counts[c, d] = total
            total += cnt
    high_start[n_high] = n
    low = np.empty(n, np.uint16)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            offset = user[i] - user_lo
            pos = counts[c, offset >> low_bits]
            counts[c, offset >> low_bits] = pos + 1
            perm[pos] = i
            ts_out[pos] = timestamp[i]
            low[pos] = offset & low_mask
    user_start = np.empty(user_span + 1, np.int64)
    user_start[user_span] = n
    for b in prange(n_high):
        a = high_start[b]
        e = high_start[b + 1]
        cursor = np.zeros(1 << low_bits, np.int64)
        for i in range(a, e):
            cursor[low[i]] += 1
        total = a
        for d in range(1 << low_bits):
            cnt = cursor[d]
            cursor[d] = total
            u = (b << low_bits) + d
            if u < user_span:
                user_start[u] = total
            total += cnt
        perm_scratch = perm[a:e].copy()
        ts_scratch = ts_out[a:e].copy()
        for k in range(e - a):
            d = low[a + k]
            pos = cursor[d]
            cursor[d] = pos + 1
            perm[pos] = perm_scratch[k]
            ts_out[pos] = ts_scratch[k]
        # Each user's rows are in cache now: sort them by time here.
        for d in range(1 << low_bits):
            u = (b << low_bits) + d
            if u < user_span:
                _sort_rows_by_time(ts_out, perm, user_start[u], cursor[d])
    return user_start


@njit(cache=True)
def _sort_rows_by_time(ts, perm, a, b):
    """Stable sort of rows ``a:b`` by time (they are in input order, so ties stay in input order)."""
    if b - a <= INSERTION_SORT_MAX:
        for k in range(a + 1, b):
            t = ts[k]
            p = perm[k]
            j = k
            while j > a and ts[j - 1] > t:
                ts[j] = ts[j - 1]
                perm[j] = perm[j - 1]
                j -= 1
            ts[j] = t
            perm[j] = p
    elif _first_not_increasing(ts[a:b], False) >= 0:
        order = np.argsort(ts[a:b], kind="mergesort")
        ts[a:b] = ts[a:b][order]
        perm[a:b] = perm[a:b][order]


@njit(parallel=True, cache=True)
def _gather_and_mark_segments(user_start, perm, item, ts, session, has_session, gap, flags):
    """Flags as in ``_gather_and_mark`` (user starts from ``user_start``); then ``perm`` becomes the items in place."""
    for i in prange(perm.shape[0]):
        if i > 0 and ((has_session and session[perm[i]] != session[perm[i - 1]]) or ts[i] - ts[i - 1] >= gap):
            flags[i] = 1
        else:
            flags[i] = 0
    for u in range(user_start.shape[0] - 1):
        if user_start[u] < user_start[u + 1]:
            flags[user_start[u]] = 3
    for i in prange(perm.shape[0]):
        perm[i] = item[perm[i]]


def _sort_by_user_then_time(user: np.ndarray, timestamp: np.ndarray):
    """Stable order of rows by (user, time, input position), by LSD radix sort.

    Returns ``(keys, perm, time_bits)``: ``perm`` the order, ``keys`` the sorted
    uint64 keys, ``keys >> time_bits`` the user offset from ``user.min()`` and,
    when ``time_bits > 0``, ``keys & (2**time_bits - 1)`` the time offset from
    ``timestamp.min()``. One combined key when user and time spans fit in 64
    bits; otherwise time passes then user passes (each pass is stable). Logs
    already in time order (the usual case) skip the time digits altogether.
    """
    n = len(user)
    user_bits, time_bits = _span_bits(user), _span_bits(timestamp)
    keys = np.empty(n, np.uint64)
    perm = np.arange(n, dtype=np.int64)
    time_sorted = _first_not_increasing(timestamp, False) < 0
    if not time_sorted and user_bits + time_bits <= 64:
        _combined_keys(user, user.min(), timestamp, timestamp.min(), time_bits, keys)
        keys, perm = _radix_sort(keys, perm, user_bits + time_bits)
        return keys, perm, time_bits
    gathered = False
    if not time_sorted:
        _offset_keys(timestamp, perm, False, timestamp.min(), keys)
        keys, perm = _radix_sort(keys, perm, time_bits)
        gathered = True
    _offset_keys(user, perm, gathered, user.min(), keys)
    keys, perm = _radix_sort(keys, perm, user_bits)
    return keys, perm, 0


def _span_bits(a: np.ndarray) -> int:
    return (int(a.max()) - int(a.min())).bit_length()


def _radix_sort(keys, perm, nbits: int):
    """Stable LSD radix sort of the low ``nbits`` of ``keys``, carrying ``perm``; returns the sorted pair.

    Digits of at most MAX_RADIX_BITS, equal widths (fewest passes); a pass whose
    digit is the same for every key is skipped.
    """
    n_passes = -(-nbits // MAX_RADIX_BITS)
    if n_passes == 0:
        return keys, perm
    width = -(-nbits // n_passes)
    keys_buf, perm_buf = np.empty_like(keys), np.empty_like(perm)
    n_threads = numba.get_num_threads()
    for shift in range(0, nbits, width):
        if _radix_pass(keys, perm, keys_buf, perm_buf, shift, width, n_threads):
            keys, keys_buf, perm, perm_buf = keys_buf, keys, perm_buf, perm
    return keys, perm


@njit(parallel=True, cache=True)
def _combined_keys(user, user_lo, timestamp, time_lo, time_bits, out):
    """``out[i] = (user[i] - user_lo) << time_bits | (timestamp[i] - time_lo)``; the caller checked it fits."""
    ulo = np.uint64(user_lo)
    tlo = np.uint64(time_lo)
    sh = np.uint64(time_bits)
    for i in prange(out.shape[0]):
        out[i] = ((np.uint64(user[i]) - ulo) << sh) | (np.uint64(timestamp[i]) - tlo)


@njit(parallel=True, cache=True)
def _offset_keys(values, perm, gather, lo, out):
    """``out[i] = values[perm[i]] - lo`` (or ``values[i] - lo``) as uint64: order-preserving for any int64 span."""
    lo_u = np.uint64(lo)
    for i in prange(out.shape[0]):
        j = np.int64(perm[i]) if gather else np.int64(i)
        out[i] = np.uint64(values[j]) - lo_u


@njit(parallel=True, cache=True)
def _radix_pass(keys, perm, keys_out, perm_out, shift, width, n_threads):
    """One stable counting-sort pass on ``width`` bits at ``shift``; False (nothing written) if the digit is constant.

    Each thread owns a contiguous chunk; buckets are laid out digit-major then
    chunk, so chunk c's keys land after chunk c-1's within every bucket: stable.
    """
    n = keys.shape[0]
    n_buckets = 1 << width
    nchunks = max(1, min(n_threads, n // 65536))
    chunk = (n + nchunks - 1) // nchunks
    sh = np.uint64(shift)
    mask = np.uint64(n_buckets - 1)
    counts = np.zeros((nchunks, n_buckets), np.int64)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            counts[c, np.intp((keys[i] >> sh) & mask)] += 1
    total = 0
    for d in range(n_buckets):
        bucket = 0
        for c in range(nchunks):
            cnt = counts[c, d]
            counts[c, d] = total
            total += cnt
            bucket += cnt
        if bucket == n:
            return False
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            d = np.intp((keys[i] >> sh) & mask)
            pos = counts[c, d]
            counts[c, d] = pos + 1
            keys_out[pos] = keys[i]
            perm_out[pos] = perm[i]
    return True


# ---------------------------------------------------------------- cutting and factorising


@njit(parallel=True, cache=True)
def _gather_and_mark(keys, perm, time_bits, time_lo, item, timestamp, session, has_session, gap,
                     item_out, ts_out, flags):
    """Write items/timestamps in sorted order; flags: 3 = new user (and session), 1 = new session, 0 = continues.

    Users (and times, when ``time_bits`` > 0) are decoded from the sorted keys
    instead of gathered: fewer random reads.
    """
    sh = np.uint64(time_bits)
    tmask = (np.uint64(1) << sh) - np.uint64(1)
    tlo = np.uint64(time_lo)
    for i in prange(keys.shape[0]):
        j = perm[i]
        item_out[i] = item[j]
        if time_bits > 0:
            ts_out[i] = np.int64((keys[i] & tmask) + tlo)
        else:
            ts_out[i] = timestamp[j]
    for i in prange(keys.shape[0]):
        if i == 0 or (keys[i] >> sh) != (keys[i - 1] >> sh):
            flags[i] = 3
        elif (has_session and session[perm[i]] != session[perm[i - 1]]) or ts_out[i] - ts_out[i - 1] >= gap:
            flags[i] = 1
        else:
            flags[i] = 0


@njit(cache=True)
def _build_ptrs(flags):
    n_sessions = 0
    n_users = 0
    for f in flags:
        n_sessions += f != 0
        n_users += f == 3
    session_ptr = np.empty(n_sessions + 1, np.int64)
    user_ptr = np.empty(n_users + 1, np.int64)
    s = 0
    u = 0
    for i in range(flags.shape[0]):
        if flags[i] == 3:
            user_ptr[u] = s
            u += 1
        if flags[i] != 0:
            session_ptr[s] = i
            s += 1
    session_ptr[n_sessions] = flags.shape[0]
    user_ptr[n_users] = n_sessions
    return user_ptr, session_ptr


@njit(cache=True)
def _user_ids_from_keys(flags, keys, time_bits, user_lo):
    n_users = 0
    for f in flags:
        n_users += f == 3
    user_ids = np.empty(n_users, np.int64)
    sh = np.uint64(time_bits)
    ulo = np.uint64(user_lo)
    u = 0
    for i in range(flags.shape[0]):
        if flags[i] == 3:
            user_ids[u] = np.int64((keys[i] >> sh) + ulo)
            u += 1
    return user_ids


def _factorise_inplace(values: np.ndarray) -> np.ndarray:
    """Replace raw ids by dense ranks in place; returns the ascending raw ids.

    A lookup table (int32 codes) when the id span is at most 4N, so the table
    is at most twice the array; else a radix argsort.
    """
    lo = values.min()
    span = int(values.max()) - int(lo) + 1
    if span <= 4 * len(values) and len(values) < 2**31:
        return _factorise_table(values, lo, span)
    keys = np.empty(len(values), np.uint64)
    perm = np.arange(len(values), dtype=np.int64)
    _offset_keys(values, perm, False, lo, keys)
    keys, perm = _radix_sort(keys, perm, (span - 1).bit_length())
    return _factorise_sorted(keys, perm, lo, values)


@njit(parallel=True, cache=True)
def _factorise_table(values, lo, span):
    code = np.full(span, -1, np.int32)
    for v in values:
        code[v - lo] = 0
    k = 0
    for r in range(span):
        if code[r] == 0:
            code[r] = k
            k += 1
    ids = np.empty(k, np.int64)
    for r in range(span):
        if code[r] >= 0:
            ids[code[r]] = r + lo
    for i in prange(values.shape[0]):
        values[i] = code[values[i] - lo]
    return ids


@njit(cache=True)
def _factorise_sorted(keys, perm, lo, out):
    n_unique = 1
    for i in range(1, keys.shape[0]):
        n_unique += keys[i] != keys[i - 1]
    ids = np.empty(n_unique, np.int64)
    lo_u = np.uint64(lo)
    k = -1
    for i in range(keys.shape[0]):
        if i == 0 or keys[i] != keys[i - 1]:
            k += 1
            ids[k] = np.int64(keys[i] + lo_u)
        out[perm[i]] = k
    return ids


# ---------------------------------------------------------------- validation helpers


def _check_ptr(ptr: np.ndarray, name: str, end: int, what: str) -> None:
    if len(ptr) < 1:
        raise ValueError(f"SessionCSR.{name} must have at least one entry")
    if ptr[0] != 0:
        raise ValueError(f"SessionCSR.{name}[0] must be 0, got {ptr[0]}")
    if ptr[-1] != end:
        raise ValueError(f"SessionCSR.{name}[-1] must equal {what} ({end}), got {ptr[-1]}")
    bad = _first_not_increasing(ptr, False)
    if bad >= 0:
        raise ValueError(f"SessionCSR.{name} must be non-decreasing (violated at index {bad})")


@njit(cache=True)
def _first_not_increasing(a, strict):
    """First index i with a[i] < a[i-1] (or <= when strict), else -1."""
    for i in range(1, a.shape[0]):
        if a[i] < a[i - 1] or (strict and a[i] == a[i - 1]):
            return i
    return -1


@njit(cache=True)
def _first_out_of_range(a, hi):
    for i in range(a.shape[0]):
        if a[i] < 0 or a[i] >= hi:
            return i
    return -1


@njit(cache=True)
def _first_time_violation(ts, session_ptr, user_ptr):
    """First interaction with a negative time or earlier than its user's previous one, else -1."""
    for u in range(user_ptr.shape[0] - 1):
        start = session_ptr[user_ptr[u]]
        for i in range(start, session_ptr[user_ptr[u + 1]]):
            if ts[i] < 0 or (i > start and ts[i] < ts[i - 1]):
                return i
    return -1


def _crc32(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))
