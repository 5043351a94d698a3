"""Preprocessing presets: the published filters, in the published order, with a report.

As in the published code, each count filter runs once, on what the filters
before it kept. Filters interact (dropping short users can leave an item below
its minimum), so ``until_stable=True`` instead repeats the count filters until
a full round removes nothing, which guarantees every minimum afterwards (the
benchmarks recorded before 2026-11-30 prepared their logs that way).

- ``hiertcn-xing``: the official HierTCN code (``data_prepare.load_xing``). Drop
  ``interaction_type == 4`` (deletes); keep items with >= 50 interactions, then
  users with 10..500 events. Sessions come later from the gap rule of
  ``pack_sessions`` (a gap of >= 1800 s starts one, as the release's
  ``dt // 1800 > 0``).
- ``hrnn-xing``: Quadrana et al. (RecSys 2017, ``build_dataset.py``). Drop
  deletes; split sessions at gaps of more than 1800 s (strictly: their
  ``tdiff > session_th``); keep the first of duplicate (item, session, type);
  then keep items with >= 20 interactions, sessions with >= 3 interactions and
  users with 5..199 sessions. The session ids are stored in ``log.session`` so
  that removing an item never splits a session afterwards.
- ``none``: nothing removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hiertcn.data.log import InteractionLog

PRESETS = ("hiertcn-xing", "hrnn-xing", "none")
_DELETE = 4


def session_ids(
    user: np.ndarray, timestamp: np.ndarray, *, session_gap: int = 1800, session: np.ndarray | None = None
) -> np.ndarray:
    """Session id of every row (input order), by ``pack_sessions``' rule.

    Rows are ordered by user, then time (ties keep input order); a new session
    starts where the user changes, where ``session`` (if given) changes, or where
    the gap to the user's previous interaction is ``>= session_gap``. Ids count
    up from 0 in that order.
    """
    if session_gap <= 0:
        raise ValueError(f"session_gap must be positive, got {session_gap}")
    order = np.lexsort((timestamp, user))
    new = _session_starts(user[order], timestamp[order], None if session is None else session[order], session_gap)
    ids = np.empty(len(order), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _session_starts(user, timestamp, session, session_gap) -> np.ndarray:
    """On rows in (user, time) order: True where a session starts (the packer's rule)."""
    new = np.ones(len(user), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (np.diff(timestamp) >= session_gap)
    if session is not None:
        new[1:] |= session[1:] != session[:-1]
    return new


@dataclass(frozen=True)
class Counts:
    interactions: int
    users: int
    items: int
    sessions: int

    def minus(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return self.interactions, self.users, self.items, self.sessions


@dataclass
class PresetReport:
    """What a preset removed: ``steps`` maps each filter to the totals it removed over all rounds."""

    preset: str
    before: Counts
    after: Counts | None = None
    steps: dict[str, Counts] = field(default_factory=dict)
    rounds: int = 0

    def as_dict(self) -> dict:
        return {
            "preset": self.preset,
            "rounds": self.rounds,
            "before": vars(self.before),
            "after": vars(self.after),
            "removed": {name: vars(c) for name, c in self.steps.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PresetReport:
        """The inverse of ``as_dict`` (a cached dataset keeps its report as ``info["preset_report"]``)."""
        return cls(
            d["preset"],
            before=Counts(**d["before"]),
            after=Counts(**d["after"]),
            steps={name: Counts(**c) for name, c in d["removed"].items()},
            rounds=d["rounds"],
        )

    def __str__(self) -> str:
        head = f"{'preset ' + self.preset:<36}{'interactions':>14}{'users':>10}{'items':>10}{'sessions':>10}"
        lines = [
            head,
            f"{'before':<36}" + "".join(f"{v:>{w}}" for v, w in zip(self.before.astuple(), (14, 10, 10, 10))),
        ]
        for name, c in self.steps.items():
            lines.append(
                f"{'- ' + name:<36}" + "".join(f"{v:>{w}}" for v, w in zip(c.astuple(), (14, 10, 10, 10)))
            )
        lines.append(
            f"{'after (' + str(self.rounds) + ' rounds)':<36}"
            + "".join(f"{v:>{w}}" for v, w in zip(self.after.astuple(), (14, 10, 10, 10)))
        )
        return "\n".join(lines)


class _Filtering:
    """A keep-mask over the log with O(N) counts: users, items and sessions are dense codes."""

    def __init__(self, log: InteractionLog, preset: str, session_gap: float):
        self.log = log
        self.preset = preset
        self.session_gap = session_gap
        self.keep = np.ones(len(log), dtype=bool)
        self.user = np.unique(log.user, return_inverse=True)[1].astype(np.int64)
        self.item = np.unique(log.item, return_inverse=True)[1].astype(np.int64)
        self.by_time = np.lexsort((log.timestamp, log.user))
        self.session: np.ndarray | None = None  # fixed session ids (hrnn-xing); None: re-split as the packer
        self.report = PresetReport(preset, before=self.counts())

    def _n_sessions(self) -> int:
        if self.session is not None:
            return self._distinct(self.session)
        # The packer's rule on the kept rows: removing a row can open a gap and split a session.
        rows = self.by_time[self.keep[self.by_time]]
        session = None if self.log.session is None else self.log.session[rows]
        return int(_session_starts(self.user[rows], self.log.timestamp[rows], session, self.session_gap).sum())

    def _distinct(self, codes: np.ndarray) -> int:
        return int(np.count_nonzero(np.bincount(codes[self.keep])))

    def counts(self) -> Counts:
        return Counts(
            int(self.keep.sum()),
            self._distinct(self.user),
            self._distinct(self.item),
            self._n_sessions(),
        )

    def apply(self, name: str, drop: np.ndarray) -> bool:
        """Drop rows where ``drop`` (among kept rows); account it under ``name``; True if anything went."""
        drop &= self.keep
        if not drop.any():
            self.report.steps.setdefault(name, Counts(0, 0, 0, 0))
            return False
        before = self.counts()
        self.keep &= ~drop
        if not self.keep.any():
            raise ValueError(f"preset {self.preset!r} removed every interaction (at step {name!r})")
        removed = before.minus(self.counts())
        total = self.report.steps.get(name, Counts(0, 0, 0, 0))
        self.report.steps[name] = Counts(*(a + b for a, b in zip(total.astuple(), removed.astuple())))
        return True

    def per_row_count(self, codes: np.ndarray) -> np.ndarray:
        """For each row, how many kept rows share its code."""
        return np.bincount(codes[self.keep], minlength=codes.max() + 1)[codes]

    def sessions_per_user(self) -> np.ndarray:
        kept_sessions = np.unique(self.session[self.keep], return_index=True)[1]
        user_of_session = self.user[self.keep][kept_sessions]
        return np.bincount(user_of_session, minlength=self.user.max() + 1)[self.user]

    def run(self, filters, until_stable: bool) -> None:
        """Each filter once, in order; with ``until_stable``, rounds of them until one removes nothing."""
        while True:
            self.report.rounds += 1
            changed = [self.apply(name, drop_fn()) for name, drop_fn in filters]
            if not (until_stable and any(changed)):
                return


def _drop_deletes(f: _Filtering) -> None:
    if f.log.interaction_type is None:
        raise ValueError(
            f"preset {f.preset!r} needs interaction_type (a XING log); use preset 'none' for this log"
        )
    f.apply("interaction_type == 4 (delete)", f.log.interaction_type == _DELETE)


def apply_preset(
    log: InteractionLog, name: str, *, session_gap: int = 1800, until_stable: bool = False
) -> tuple[InteractionLog, PresetReport]:
    """Filter ``log`` by preset ``name`` (see the module docstring); returns the kept rows and the report."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    f = _Filtering(log, name, session_gap)
    if name == "hiertcn-xing":
        _drop_deletes(f)
        f.run(
            [
                ("items with < 50 interactions", lambda: f.per_row_count(f.item) < 50),
                ("users with < 10 or > 500 events", lambda: _outside(f.per_row_count(f.user), 10, 500)),
            ],
            until_stable,
        )
    elif name == "hrnn-xing":
        _drop_deletes(f)
        # Sessions are fixed once deletes are gone; later filters remove rows but never re-split.
        kept = f.keep.copy()
        f.session = np.zeros(len(log), dtype=np.int64)  # removed rows never count, any id does
        f.session[kept] = session_ids(
            log.user[kept],
            log.timestamp[kept],
            session_gap=session_gap + 1,  # HRNN splits at gaps > session_gap; timestamps are whole seconds
            session=None if log.session is None else log.session[kept],
        )
        f.apply(
            "duplicate (item, session, type)",
            _duplicates(f.session, log.item, log.interaction_type, log.timestamp) & f.keep,
        )
        f.run(
            [
                ("items with < 20 interactions", lambda: f.per_row_count(f.item) < 20),
                ("sessions with < 3 interactions", lambda: f.per_row_count(f.session) < 3),
                ("users with < 5 or > 199 sessions", lambda: _outside(f.sessions_per_user(), 5, 199)),
            ],
            until_stable,
        )
        log = replace(log, session=f.session)
    else:
        f.report.rounds = 0
    f.report.after = f.counts()
    out = log if f.keep.all() else log.select(f.keep)
    return out, f.report


def _outside(count: np.ndarray, low: int, high: int) -> np.ndarray:
    return (count < low) | (count > high)


def _duplicates(
    session: np.ndarray, item: np.ndarray, itype: np.ndarray, timestamp: np.ndarray
) -> np.ndarray:
    """True on every repeat of an (item, session, type) triple except its earliest (ties: input order)."""
    order = np.lexsort((np.arange(len(item)), timestamp, itype, item, session))
    s, i, t = session[order], item[order], itype[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (s[1:] == s[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])
    out = np.empty(len(order), dtype=bool)
    out[order] = repeat
    return out
