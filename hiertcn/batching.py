"""Batches of session windows laid out in lanes, the one input every model takes.

A lane is one of the official code's queues: a run of sessions in time order,
possibly spanning several users (``new_user`` marks where the carried
high-level state resets). The queue batcher fills lanes with up to 10 session
windows each and carries state across batches; whole-user batches put one
user's full history in each lane. Targets are the items themselves: models
shift inputs right inside each session window, so every position, the first
included, predicts its own item.

With a log that has impressions (``Dataset.impressions``), a batch also holds
each token's impressed items, ragged and aligned with ``items`` (``imp_ptr``,
``imp_item``); models and losses that use impressions read them from there.

A batch built on the host also carries what a training step would otherwise
read back from the device: its index layouts (:class:`LaneRuns`,
``target_index``) and the bounds of its item ids (``item_bounds``). They are
computed here, on the loader thread, and travel with the batch (one copy per
dtype, :meth:`SessionBatch.to`), so a step on a GPU waits for no host read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from hiertcn_kernels._checks import remember_offsets

from ._ragged import offsets, ranges


@dataclass(frozen=True)
class LaneRuns:
    """Each lane's windows cut into runs of one user (a run starts at a lane start or a ``new_user``
    window), as index tensors (indexing with them needs no host read):

    - ``window (R, L)``: run ``r``'s ``j``-th window, or ``S`` (one past the last window: a zero
      row the caller appends) past the run's end;
    - ``lane (R,)`` and ``fresh (R,)``: the run's lane, and whether it starts from a zero state
      (a new user) rather than the lane's carried state;
    - ``flat_valid (S,)``: the positions of the real windows in ``(R, L)`` flattened, in window order;
    - ``last_run``, ``last_step``, ``last_lane``: the run that ends each lane holding windows, its
      last position and that lane.
    """

    window: torch.Tensor
    lane: torch.Tensor
    fresh: torch.Tensor
    flat_valid: torch.Tensor
    last_run: torch.Tensor
    last_step: torch.Tensor
    last_lane: torch.Tensor


def lane_runs_of(lane_ptr: np.ndarray, new_user: np.ndarray, window_len: np.ndarray) -> LaneRuns | None:
    """:class:`LaneRuns` (CPU tensors) of a batch layout given as numpy arrays; None if there is no
    window, or an empty one (hand-built batches only), whose state a recurrence over runs cannot pass
    through unchanged."""
    n_windows, n_lanes = len(new_user), len(lane_ptr) - 1
    if n_windows == 0 or (window_len == 0).any():
        return None
    counts = np.diff(lane_ptr)
    window_lane = np.repeat(np.arange(n_lanes, dtype=np.int64), counts)
    starts_run = np.asarray(new_user, dtype=bool).copy()
    starts_run[lane_ptr[:-1][counts > 0]] = True
    run_start = np.flatnonzero(starts_run).astype(np.int64)
    run_len = np.diff(np.append(run_start, n_windows))
    run_lane = window_lane[run_start]
    col = np.arange(int(run_len.max()), dtype=np.int64)
    valid = col[None, :] < run_len[:, None]
    window = np.where(valid, run_start[:, None] + col[None, :], n_windows)
    last_run = np.flatnonzero(np.append(run_lane[1:] != run_lane[:-1], True)).astype(np.int64)
    return LaneRuns(
        window=torch.from_numpy(window.astype(np.int64)),
        lane=torch.from_numpy(run_lane.astype(np.int64)),
        fresh=torch.from_numpy(np.asarray(new_user, dtype=bool)[run_start]),
        flat_valid=torch.from_numpy(np.flatnonzero(valid.ravel()).astype(np.int64)),
        last_run=torch.from_numpy(last_run),
        last_step=torch.from_numpy((run_len[last_run] - 1).astype(np.int64)),
        last_lane=torch.from_numpy(run_lane[last_run].astype(np.int64)),
    )


def to_device(tensors: list[torch.Tensor], device, non_blocking: bool = False) -> list[torch.Tensor]:
    """``[t.to(device) for t in tensors]``, from the host to a GPU in one copy per dtype (through pinned
    memory when ``non_blocking``): a batch's dozen small index tensors would otherwise cost a dozen
    copies, each some microseconds of a training step's host time."""
    device = torch.device(device)
    if device.type == "cpu" or not all(t.device.type == "cpu" for t in tensors):
        return [t.to(device, non_blocking=non_blocking) for t in tensors]

    def move(flat):
        return (flat.pin_memory() if non_blocking else flat).to(device, non_blocking=non_blocking)

    return moved_by_dtype(tensors, move)


def moved_by_dtype(tensors: list[torch.Tensor], move) -> list[torch.Tensor]:
    """``tensors`` moved by ``move(flat)`` once per dtype: each group flattened into one tensor, moved,
    and split back into views of the original shapes."""
    moved: list[torch.Tensor | None] = [None] * len(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):  # first-seen order: the same copies every batch
        group = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = move(torch.cat([tensors[i].reshape(-1) for i in group]))
        for i, part in zip(group, flat.split([tensors[i].numel() for i in group])):
            moved[i] = part.view(tensors[i].shape)
    return moved


@dataclass
class SessionBatch:
    items: torch.Tensor  # (T,) int64 dense item index of every interaction (also the targets)
    cu_seqlens: torch.Tensor  # (S+1,) int64 offsets of session windows into items
    lane_ptr: torch.Tensor  # (Q+1,) int64 offsets of lanes into session windows
    new_user: torch.Tensor  # (S,) bool: window starts a new user in its lane (state reset before it)
    gap: torch.Tensor  # (S,) float32 seconds since the user's previous interaction (0 where new_user)
    target_mask: torch.Tensor  # (T,) bool: positions that count in the loss / metrics
    lane_user: torch.Tensor  # (Q,) int64 user row (SessionCSR) in each lane at the batch end, -1 if none
    # Impressions (None when the log has none): token t was shown imp_item[imp_ptr[t]:imp_ptr[t+1]].
    imp_ptr: torch.Tensor | None = None  # (T+1,) int64 offsets into imp_item
    imp_item: torch.Tensor | None = None  # (M,) int64 dense item indices
    # Layouts derived from the fields above, computed at construction when those are on the host (None
    # otherwise: a model then reads the layout back itself); ``to`` moves them along, ``replace`` redoes them.
    runs: LaneRuns | None = field(init=False, default=None, repr=False)  # lanes' runs of one user (HierTCN's GRU)
    target_index: torch.Tensor | None = field(init=False, default=None, repr=False)  # (n,) where target_mask
    item_bounds: tuple[int, int] | None = field(init=False, default=None, repr=False)  # least, largest item id

    def __post_init__(self):
        if all(t.device.type == "cpu" for t in (self.lane_ptr, self.cu_seqlens, self.new_user, self.target_mask)):
            self.runs = lane_runs_of(self.lane_ptr.numpy(), self.new_user.numpy(), self.cu_seqlens.diff().numpy())
            self.target_index = torch.from_numpy(np.flatnonzero(self.target_mask.numpy()))
        ids = [t for t in (self.items, self.imp_item) if t is not None and t.numel()]
        if ids and all(t.device.type == "cpu" for t in ids):  # of items and impressions alike
            self.item_bounds = (min(int(t.min()) for t in ids), max(int(t.max()) for t in ids))

    @property
    def n_lanes(self) -> int:
        return self.lane_ptr.numel() - 1

    @property
    def n_sessions(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def n_tokens(self) -> int:
        return self.items.numel()

    @property
    def has_impressions(self) -> bool:
        return self.imp_ptr is not None

    def impression_matrix(self, k: int, mask: torch.Tensor | None = None, *, sample: bool = False) -> torch.Tensor:
        """``(n, k)`` int64: ``k`` impressed items of each token where ``mask``, ``-1`` padded.

        The first ``k`` of each list; with ``sample``, ``k`` drawn at random without replacement
        (torch's RNG) from a longer list, so that a few negatives out of a week's list differ per step.
        """
        if not self.has_impressions:
            raise ValueError("this batch has no impressions (the log was prepared without them)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        starts, lengths = self.imp_ptr[:-1], self.imp_ptr.diff()
        if mask is not None:
            starts, lengths = starts[mask], lengths[mask]
        column = torch.arange(k, device=starts.device)
        valid = column[None, :] < lengths[:, None]
        if self.imp_item.numel() == 0:
            return torch.full(valid.shape, -1, dtype=torch.int64, device=starts.device)
        if sample and bool((lengths > k).any()):
            # A random permutation of each row's positions (random keys, the positions past its length last).
            width = torch.arange(int(lengths.max()), device=starts.device)
            keys = torch.rand(len(lengths), len(width), device=starts.device).masked_fill_(
                width[None, :] >= lengths[:, None], 2.0)
            column = keys.argsort(1)[:, :k]
        index = (starts[:, None] + column).clamp(max=self.imp_item.numel() - 1)
        return torch.where(valid, self.imp_item[index], -1)

    def to(self, device, non_blocking: bool = False) -> SessionBatch:
        """The batch on ``device`` (itself if it is there); from the host to a GPU in one copy per dtype
        (:func:`to_device`), its derived layouts included."""
        names = [f.name for f in fields(self)
                 if f.name not in ("runs", "item_bounds") and getattr(self, f.name) is not None]  # fmt: skip
        run_names = [] if self.runs is None else [f.name for f in fields(LaneRuns)]
        tensors = [getattr(self, n) for n in names] + [getattr(self.runs, n) for n in run_names]
        if torch.device(device).type == "cpu" and all(t.device.type == "cpu" for t in tensors):
            return self
        moved = dict(zip(names + run_names, to_device(tensors, device, non_blocking)))
        derived = {"target_index": moved.pop("target_index", None), "item_bounds": self.item_bounds}
        derived["runs"] = LaneRuns(**{n: moved.pop(n) for n in run_names}) if run_names else None
        batch = SessionBatch(**moved)
        for name, value in derived.items():
            if value is not None:  # not None where the target device is the host (then built afresh)
                setattr(batch, name, value)
        for name in ("cu_seqlens", "imp_ptr"):  # the offsets every kernel op checks: known here, not read back
            if getattr(self, name) is not None:
                remember_offsets(getattr(batch, name), getattr(self, name))
        return batch


def check_impressions(impressions, csr) -> None:
    """``impressions`` must be None or ``(imp_ptr (N+1,), imp_item (M,))`` over ``csr``'s interactions."""
    if impressions is None:
        return
    if not isinstance(impressions, tuple) or len(impressions) != 2:
        raise TypeError("impressions must be None or an (imp_ptr, imp_item) tuple (Dataset.impressions)")
    imp_ptr, imp_item = impressions
    if len(imp_ptr) != csr.n_interactions + 1 or imp_ptr[-1] != len(imp_item):
        raise ValueError(
            f"impressions: imp_ptr must have length n_interactions + 1 = {csr.n_interactions + 1} and end at "
            f"len(imp_item); got {len(imp_ptr)} and {imp_ptr[-1] if len(imp_ptr) else None}"
        )


def token_impressions(impressions, positions: np.ndarray) -> dict[str, torch.Tensor]:
    """``{"imp_ptr", "imp_item"}`` of the interactions ``positions`` (empty when ``impressions`` is None).

    ``impressions``: ``(imp_ptr, imp_item)`` over the CSR's interactions (``Dataset.impressions``).
    """
    if impressions is None:
        return {}
    imp_ptr, imp_item = impressions
    starts, ends = imp_ptr[positions], imp_ptr[positions + 1]
    return {
        "imp_ptr": torch.from_numpy(offsets(ends - starts)),
        "imp_item": torch.from_numpy(np.ascontiguousarray(imp_item[ranges(starts, ends)], dtype=np.int64)),
    }


# ---- Whole-user batches: one user's full history (windowed) per lane --------------------------------

MAX_SESSION_LEN = 20  # the official cap on a session window


def _user_batch(csr, users, session_end, max_session_len: int, score_sessions, impressions) -> SessionBatch:
    first_session = csr.user_ptr[users]
    sessions = ranges(first_session, session_end)
    n_sessions_per_user = session_end - first_session
    lo, hi = csr.session_ptr[sessions], csr.session_ptr[sessions + 1]
    n_windows = -(-(hi - lo) // max_session_len)  # ceil; an empty session gives no window
    window_session = np.repeat(np.arange(len(sessions)), n_windows)
    first_window_of_session = offsets(n_windows)[:-1]
    k = np.arange(len(window_session)) - first_window_of_session[window_session]  # window index in its session
    w_lo = lo[window_session] + k * max_session_len
    w_hi = np.minimum(w_lo + max_session_len, hi[window_session])
    tokens = ranges(w_lo, w_hi)

    # As in QueueBatcher: the state resets at each user's first window (empty sessions have none), and every
    # other window is decayed by the time since the interaction before it (its session's or the last one's).
    session_lane = np.repeat(np.arange(len(users)), n_sessions_per_user)
    windows_per_user = np.bincount(session_lane[window_session], minlength=len(users))
    new_user = np.zeros(len(window_session), dtype=bool)
    new_user[offsets(windows_per_user)[:-1][windows_per_user > 0]] = True
    previous = csr.timestamp[np.maximum(w_lo - 1, 0)]
    gap = np.where(new_user, 0, csr.timestamp[w_lo] - previous).astype(np.float32)

    if score_sessions is None:
        target = np.ones(len(tokens), dtype=bool)
    else:
        target = np.repeat(score_sessions[sessions[window_session]], w_hi - w_lo)
    return SessionBatch(
        items=torch.from_numpy(np.ascontiguousarray(csr.item[tokens], dtype=np.int64)),
        cu_seqlens=torch.from_numpy(offsets(w_hi - w_lo)),
        lane_ptr=torch.from_numpy(offsets(windows_per_user)),
        new_user=torch.from_numpy(new_user),
        gap=torch.from_numpy(gap),
        target_mask=torch.from_numpy(target),
        lane_user=torch.from_numpy(users.astype(np.int64)),
        **token_impressions(impressions, tokens),
    )


def user_batches(
    csr,
    users=None,
    *,
    max_session_len: int = MAX_SESSION_LEN,
    score_sessions: np.ndarray | None = None,
    batch_users: int = 64,
    max_tokens: int | None = None,
    impressions=None,
) -> Iterator[SessionBatch]:
    """Batches with one user's whole history per lane, sessions in time order, cut into windows.

    ``csr``: a :class:`~hiertcn_kernels.packing.SessionCSR`. ``users``: user rows
    (default: all, in order). A session longer than ``max_session_len`` becomes
    consecutive windows (not ``new_user``; gap: the time since the item before), as in training.
    ``score_sessions``: bool ``(n_sessions,)`` over the CSR's sessions; their
    positions get ``target_mask`` True (default: every position). When given,
    a user's sessions after their last scored one are left out (a causal model
    cannot use them) and users with no scored session are skipped.
    A batch holds up to ``batch_users`` users and, if ``max_tokens`` is set, at
    most ``max_tokens`` interactions (a longer user still gets a batch alone).
    ``impressions``: ``(imp_ptr, imp_item)`` over the CSR's interactions
    (``Dataset.impressions``); the batches then carry each token's impressions.
    """
    for name, value in (("max_session_len", max_session_len), ("batch_users", batch_users)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    max_session_len, batch_users = int(max_session_len), int(batch_users)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens!r}")
    check_impressions(impressions, csr)
    users = np.arange(csr.n_users) if users is None else np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= csr.n_users):
        raise ValueError(f"users must be user rows in [0, {csr.n_users})")
    session_end = csr.user_ptr[users + 1].copy()
    if score_sessions is not None:
        score_sessions = np.asarray(score_sessions)
        if score_sessions.dtype != np.bool_ or score_sessions.shape != (csr.n_sessions,):
            raise ValueError(
                f"score_sessions must be a bool array of shape ({csr.n_sessions},), "
                f"got {score_sessions.dtype} {score_sessions.shape}"
            )
        # Last scored session of each user + 1 (0 where none is scored).
        # Running max over sessions; it lies inside a user's range only if that user has a scored session.
        running = np.maximum.accumulate(np.where(score_sessions, np.arange(csr.n_sessions) + 1, 0))
        starts, ends = csr.user_ptr[users], csr.user_ptr[users + 1]
        last = np.where(ends > starts, running[np.maximum(ends - 1, 0)], 0) if csr.n_sessions else starts
        keep = last > starts
        users, session_end = users[keep], last[keep]
    n_tokens = csr.session_ptr[session_end] - csr.session_ptr[csr.user_ptr[users]]
    begin = 0
    while begin < len(users):
        end = begin + 1
        budget = n_tokens[begin]
        while end < len(users) and end - begin < batch_users:
            if max_tokens is not None and budget + n_tokens[end] > max_tokens:
                break
            budget += n_tokens[end]
            end += 1
        yield _user_batch(
            csr, users[begin:end], session_end[begin:end], max_session_len, score_sessions, impressions
        )
        begin = end

# ---------------------------------------------------------------------------
# Queue batcher (the official scheme): lanes carry state across batches.
# ---------------------------------------------------------------------------


class QueueBatcher:
    """The official HierTCN batching: ``n_queues`` lanes that carry state across batches.

    Each new user (in a per-epoch shuffled order) goes to the queue with the fewest
    pending session windows whenever some queue holds fewer than ``sessions_per_lane``;
    every batch pops up to ``sessions_per_lane`` windows from each queue. A session
    longer than ``max_session_len`` is split into consecutive windows (nothing is
    dropped) unless ``truncate=True``, which keeps its first ``max_session_len`` items.

    ``carry_over=True`` is the release's endless stream of users: an epoch ends once its
    users are all queued and some queue can no longer fill its lane, and the windows
    still queued open the next epoch, in the same lanes, before its users. Every batch
    then has full lanes; without it each epoch drains its queues, and its last batches
    hold the few longest users' remaining sessions, one or two lanes each, which count
    as much in a training step as a full batch. An epoch that never fills every lane
    (fewer users than queues: a tiny log, or a small DDP shard) drains either way.

    ``include`` (bool per CSR session, default all) picks the sessions that enter
    the lanes; ``targets`` (bool per session, default ``include``) picks those whose
    items count in ``SessionBatch.target_mask``. ``users`` restricts the epoch to
    those user rows (how distributed ranks shard the data). ``impressions``
    (``Dataset.impressions``) makes the batches carry each token's impressions.

    Epochs are pure functions of ``(seed, epoch)`` (with ``carry_over``, of the seed
    and the epochs before, whose plans are replayed: no tensors), so
    ``batches(epoch, start=k)`` resumes exactly at batch ``k`` without building
    the batches before it.
    """

    def __init__(
        self,
        csr,
        *,
        n_queues: int = 32,
        sessions_per_lane: int = 10,
        max_session_len: int = 20,
        truncate: bool = False,
        include: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        users: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        impressions=None,
        carry_over: bool = False,
    ):
        for name, value in (
            ("n_queues", n_queues),
            ("sessions_per_lane", sessions_per_lane),
            ("max_session_len", max_session_len),
        ):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        n_sessions = csr.n_sessions
        include = _session_mask("include", include, n_sessions, default=np.ones(n_sessions, dtype=bool))
        targets = _session_mask("targets", targets, n_sessions, default=include)
        self.csr = csr
        self.n_queues = int(n_queues)
        self.sessions_per_lane = int(sessions_per_lane)
        self.shuffle = shuffle
        self.seed = seed
        self.carry_over = bool(carry_over)
        check_impressions(impressions, csr)
        self.impressions = impressions

        # Windows of every included session, grouped by user in time order.
        session_ptr = np.asarray(csr.session_ptr, dtype=np.int64)
        sessions = np.flatnonzero(include)
        starts, ends = session_ptr[sessions], session_ptr[sessions + 1]
        lengths = ends - starts
        if truncate:
            n_windows = (lengths > 0).astype(np.int64)
        else:
            n_windows = -(-lengths // max_session_len)
        session_of_window = np.repeat(np.arange(len(sessions)), n_windows)
        first_window = np.cumsum(n_windows) - n_windows
        k = np.arange(len(session_of_window)) - np.repeat(first_window, n_windows)
        self._start = starts[session_of_window] + k * max_session_len
        self._end = np.minimum(self._start + max_session_len, ends[session_of_window])
        self._target = targets[sessions][session_of_window]
        session_user = np.repeat(np.arange(csr.n_users), np.diff(np.asarray(csr.user_ptr)))
        window_user = session_user[sessions][session_of_window]
        # user_windows[u]: windows [wptr[u], wptr[u+1]) of user row u.
        self._wptr = offsets(np.bincount(window_user, minlength=csr.n_users))

        has_windows = np.flatnonzero(np.diff(self._wptr) > 0)
        if users is None:
            self.users = has_windows
        else:
            users = np.asarray(users, dtype=np.int64)
            if users.ndim != 1 or (users.size and (users.min() < 0 or users.max() >= csr.n_users)):
                raise ValueError(f"users must be a 1-D array of user rows in [0, {csr.n_users})")
            self.users = users[np.diff(self._wptr)[users] > 0]
        self._first_of_user = np.zeros(len(self._start), dtype=bool)
        self._first_of_user[self._wptr[has_windows]] = True
        timestamp = np.asarray(csr.timestamp)
        previous = timestamp[np.maximum(self._start - 1, 0)]
        self._gap = np.where(self._first_of_user, 0, timestamp[self._start] - previous)
        self._cum_len = offsets(self._end - self._start)
        self._plan_cache: tuple[int, list] | None = None
        self._carried: dict[int, list[list[int]]] = {0: [[] for _ in range(self.n_queues)]}  # epoch -> queued at start

    @property
    def n_interactions(self) -> int:
        """Interactions of the users one epoch queues (with ``carry_over``, what it feeds through the lanes
        differs by the windows it takes over from the epoch before and leaves to the next)."""
        return int((self._cum_len[self._wptr[self.users + 1]] - self._cum_len[self._wptr[self.users]]).sum())

    def user_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.users
        return np.random.default_rng((self.seed, epoch)).permutation(self.users)

    def carried_in(self, epoch: int) -> list[list[int]]:
        """Per lane, the window indices still queued when ``epoch`` begins (none without ``carry_over``)."""
        if not self.carry_over:
            return self._carried[0]
        known = max(e for e in self._carried if e <= epoch)
        for e in range(known, epoch):  # each epoch opens with what the one before left queued (a resume replays)
            self.plan(e)
        return self._carried[epoch]

    def plan(self, epoch: int) -> list[list[np.ndarray]]:
        """Window indices of every lane of every batch of ``epoch`` (cheap: no tensors)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            plan, left = self._plan(epoch)
            if self.carry_over:
                self._carried[epoch + 1] = left
            self._plan_cache = (epoch, plan)
        return self._plan_cache[1]

    def _plan(self, epoch: int) -> tuple[list[list[np.ndarray]], list[list[int]]]:
        """``epoch``'s batches and the windows it leaves queued (empty unless ``carry_over``)."""
        order = self.user_order(epoch)
        wptr, spl = self._wptr, self.sessions_per_lane
        queues = [list(q) for q in self.carried_in(epoch)]  # pending window indices
        heads = [0] * self.n_queues
        pending = np.array([len(q) for q in queues], dtype=np.int64)
        next_user, plan, filled = 0, [], False
        while True:
            while next_user < len(order) and pending.min() < spl:
                q = int(pending.argmin())  # the shortest queue takes the next user
                u = order[next_user]
                queues[q].extend(range(wptr[u], wptr[u + 1]))
                pending[q] += wptr[u + 1] - wptr[u]
                next_user += 1
            if self.carry_over and filled and next_user == len(order) and pending.min() < spl:
                return plan, [q[h:] for q, h in zip(queues, heads)]  # the next epoch's users fill the lanes
            if pending.max() == 0:
                return plan, [[] for _ in range(self.n_queues)]
            filled = filled or pending.min() >= spl
            lanes = []
            for q in range(self.n_queues):
                take = min(spl, int(pending[q]))
                lanes.append(np.asarray(queues[q][heads[q] : heads[q] + take], dtype=np.int64))
                heads[q] += take
                pending[q] -= take
                if pending[q] == 0:
                    queues[q], heads[q] = [], 0
            plan.append(lanes)

    def batches(self, epoch: int, start: int = 0):
        """Yield the :class:`SessionBatch` es of ``epoch``, beginning at batch ``start``."""
        for lanes in self.plan(epoch)[start:]:
            yield self.materialize(lanes)

    def n_batches(self, epoch: int) -> int:
        return len(self.plan(epoch))

    def materialize(self, lanes: list[np.ndarray]) -> SessionBatch:
        windows = np.concatenate(lanes)
        starts, ends = self._start[windows], self._end[windows]
        lengths = ends - starts
        cu = offsets(lengths)
        positions = ranges(starts, ends)
        lane_ptr = offsets([len(lane) for lane in lanes])
        user_of = np.searchsorted(self._wptr, windows, side="right") - 1
        lane_user = np.array([user_of[lane_ptr[q + 1] - 1] if len(lane) else -1 for q, lane in enumerate(lanes)])
        return SessionBatch(
            items=torch.from_numpy(np.asarray(self.csr.item)[positions].astype(np.int64)),
            cu_seqlens=torch.from_numpy(cu),
            lane_ptr=torch.from_numpy(lane_ptr),
            new_user=torch.from_numpy(self._first_of_user[windows].copy()),
            gap=torch.from_numpy(self._gap[windows].astype(np.float32)),
            target_mask=torch.from_numpy(np.repeat(self._target[windows], lengths)),
            lane_user=torch.from_numpy(lane_user.astype(np.int64)),
            **token_impressions(self.impressions, positions),
        )


def _session_mask(name: str, mask, n_sessions: int, *, default: np.ndarray) -> np.ndarray:
    if mask is None:
        return default
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (n_sessions,):
        raise ValueError(f"{name} must be a bool array of shape ({n_sessions},), got {mask.dtype} {mask.shape}")
    return mask
