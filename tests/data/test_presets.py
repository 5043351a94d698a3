import json

import numpy as np
import pytest

from hiertcn.data.log import InteractionLog
from hiertcn.data.presets import Counts, PresetReport, apply_preset, session_ids
from hiertcn_kernels import pack_sessions


def make_log(rows, with_type=True):
    user, item, ts, itype = (np.array(col, dtype=np.int64) for col in zip(*rows))
    return InteractionLog(
        user=user, item=item, timestamp=ts, interaction_type=itype.astype(np.int8) if with_type else None
    )


def cascade_log():
    """One filter pass is not enough: dropping rare item R drops user A (9 events left), whose removal leaves
    item X with 41 < 50 interactions; only then is the log stable (users B keep 10 events on item Y)."""
    t = iter(range(1_000_000, 10**9, 3600))
    rows = [(1, 666, next(t), 1)] + [(1, 77, next(t), 1) for _ in range(9)]
    for b, n_x in zip(range(10, 15), (8, 8, 8, 8, 9)):
        rows += [(b, 77, next(t), 1) for _ in range(n_x)] + [(b, 88, next(t), 2) for _ in range(10)]
    rows += [(20, 88, next(t), 4)]  # a delete
    return make_log(rows)


def test_hiertcn_xing_until_stable_reaches_the_fixed_point():
    out, report = apply_preset(cascade_log(), "hiertcn-xing", until_stable=True)
    assert set(out.item.tolist()) == {88} and set(out.user.tolist()) == set(range(10, 15))
    assert len(out) == 50 and report.rounds == 3
    assert report.steps["interaction_type == 4 (delete)"].interactions == 1
    assert report.steps["items with < 50 interactions"] == Counts(
        interactions=42, users=0, items=2, sessions=42
    )
    assert report.steps["users with < 10 or > 500 events"].interactions == 9
    assert report.steps["users with < 10 or > 500 events"].users == 1
    assert report.before.interactions == 102 and report.after == Counts(50, 5, 1, 50)
    assert "after (3 rounds)" in str(report)
    again = PresetReport.from_dict(json.loads(json.dumps(report.as_dict())))  # as a cached dataset keeps it
    assert again == report and str(again) == str(report)


def test_session_counts_are_those_the_packer_will_make():
    # A delete between two clicks bridges them into one session; once the preset drops it, the 2000 s gap
    # splits them, as pack_sessions will: the report counts the sessions that are actually packed.
    rows = []
    for user in range(60):
        rows += [(user, 1, 100 * k, 1) for k in range(11)] + [(user, 2, 2000, 4), (user, 1, 3000, 1)]
    log = make_log(rows)
    assert len(np.unique(session_ids(log.user, log.timestamp))) == 60
    out, report = apply_preset(log, "hiertcn-xing")
    packed = pack_sessions(out.user, out.item, out.timestamp, session_gap=1800)
    assert report.before.sessions == 60 and report.after.sessions == packed.n_sessions == 120
    removed = report.steps["interaction_type == 4 (delete)"]
    assert removed.sessions == -60  # dropping the deletes split every user's session in two
    assert sum(c.sessions for c in report.steps.values()) == report.before.sessions - report.after.sessions


def test_hiertcn_xing_filters_once_as_published():
    # The release's load_xing: deletes, then items >= 50, then users 10..500, each once.
    log = cascade_log()
    keep = log.interaction_type != 4
    items, counts = np.unique(log.item[keep], return_counts=True)
    keep &= np.isin(log.item, items[counts >= 50])
    users, counts = np.unique(log.user[keep], return_counts=True)
    keep &= np.isin(log.user, users[(counts >= 10) & (counts <= 500)])
    out, report = apply_preset(log, "hiertcn-xing")
    assert len(out) == keep.sum() and np.array_equal(out.user, log.user[keep]) and report.rounds == 1
    assert 77 in out.item  # item 77 fell below 50 when a user went; the release keeps it, until_stable does not
    assert 77 not in apply_preset(log, "hiertcn-xing", until_stable=True)[0].item


def hrnn_log():
    rows, t = [], 1_000_000
    for u in range(7):
        for s in range(5):
            t += 86400
            items = [1, 1, 2] if (u == 0 and s == 0) else [1, 2, 3]
            rows += [(u, i, t + k * 60, 1) for k, i in enumerate(items)]
    rows.append((0, 3, t + 10**6, 4))
    return make_log(rows)


def test_hrnn_xing_dedupes_then_filters_sessions_and_users():
    out, report = apply_preset(hrnn_log(), "hrnn-xing")
    assert set(out.user.tolist()) == set(range(1, 7))  # user 0 lost a session to dedupe, then had only 4
    assert len(out) == 90 and report.rounds == 1
    assert apply_preset(hrnn_log(), "hrnn-xing", until_stable=True)[1].rounds == 2  # a second round, empty
    assert report.steps["duplicate (item, session, type)"].interactions == 1
    assert report.steps["sessions with < 3 interactions"] == Counts(
        interactions=2, users=0, items=0, sessions=1
    )
    assert report.steps["users with < 5 or > 199 sessions"] == Counts(
        interactions=12, users=1, items=0, sessions=4
    )
    assert report.after.sessions == 30
    assert len(np.unique(out.session)) == 30  # session ids travel with the log


def test_none_keeps_everything():
    log = cascade_log()
    out, report = apply_preset(log, "none")
    assert out is log and report.after == report.before and not report.steps


def test_everything_filtered_is_an_error():
    log = make_log([(1, 2, 100, 1), (1, 3, 200, 1)])
    with pytest.raises(ValueError, match="removed every interaction"):
        apply_preset(log, "hiertcn-xing")


def test_bad_preset_and_missing_types():
    log = make_log([(1, 2, 100, 1)], with_type=False)
    with pytest.raises(ValueError, match="preset must be one of"):
        apply_preset(log, "gru4rec")
    with pytest.raises(ValueError, match="needs interaction_type"):
        apply_preset(log, "hrnn-xing")


def test_session_ids_match_the_packer_rule():
    rng = np.random.default_rng(0)
    n = 400
    user = rng.integers(0, 8, n)
    ts = rng.integers(0, 20_000, n)
    src = rng.integers(0, 3, n)
    ids = session_ids(user, ts, session_gap=1800, session=src)
    order = sorted(range(n), key=lambda r: (user[r], ts[r], r))
    expected, current, prev = np.empty(n, dtype=np.int64), -1, None
    for r in order:
        if prev is None or user[r] != user[prev] or src[r] != src[prev] or ts[r] - ts[prev] >= 1800:
            current += 1
        expected[r], prev = current, r
    np.testing.assert_array_equal(ids, expected)
    with pytest.raises(ValueError, match="session_gap"):
        session_ids(user, ts, session_gap=0)


def test_hrnn_xing_splits_sessions_at_gaps_over_1800_s():
    # HRNN's make_sessions splits where tdiff > 1800; HierTCN's release (and pack_sessions) at >= 1800.
    def blocks(gap):  # 5 blocks of 3 clicks per user, each block `gap` s after the block before it ends
        rows = []
        for user in range(25):
            t = 0
            for _ in range(5):
                rows += [(user, item, t + 60 * k, 1) for k, item in enumerate((1, 2, 3))]
                t += 120 + gap
        return make_log(rows)

    kept = apply_preset(blocks(1801), "hrnn-xing")[0]
    assert len(np.unique(kept.session)) == 125  # > 1800: five sessions per user, all kept
    with pytest.raises(ValueError, match="removed every interaction"):
        apply_preset(blocks(1800), "hrnn-xing")  # exactly 1800: one 15-click session per user, < 5 sessions
