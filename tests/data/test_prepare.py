import math

import numpy as np
import pytest

import hiertcn.data.prepare as prepare_module
from hiertcn.data import (
    TEST,
    TRAIN,
    BadRowsError,
    apply_preset,
    generate_xing,
    pack_sessions,
    prepare_dataset,
    read_log,
    split_by_user,
    split_last_session,
)

SMALL = {"n_users": 200, "n_items": 150, "n_topics": 10, "impressions": False}


@pytest.fixture(scope="module")
def xing(tmp_path_factory):
    return generate_xing(tmp_path_factory.mktemp("src"), seed=1, **SMALL).interactions


def entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_end_to_end_matches_the_steps(xing, tmp_path):
    ds, entry = prepare_dataset(xing, cache_dir=tmp_path)
    assert entry.parent == tmp_path and ds.info["preset"] == "hiertcn-xing" and ds.info["format"] == "xing"
    log, report = apply_preset(read_log(xing), "hiertcn-xing")
    expected = split_last_session(pack_sessions(log.user, log.item, log.timestamp))
    for name in ("user_ptr", "session_ptr", "item", "timestamp", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(ds.csr, name), getattr(expected.csr, name))
    np.testing.assert_array_equal(ds.role, expected.role)
    assert ds.info["preset_report"] == report.as_dict()
    assert (ds.role == TEST).any() and (ds.role == TRAIN).any()


def test_hrnn_preset_keeps_its_sessions(tmp_path):
    """Dropping the rare item 9 leaves a 2000 s gap inside user 0's first session; it must stay one session."""
    rows, t = [], 1_446_336_000
    for user in range(6):
        for _ in range(5):
            t += 86400
            rows += [(user, item, t + 60 * k) for k, item in enumerate((1, 2, 3))]
    rows += [(0, 1, 1_000_000_000), (0, 9, 1_000_001_000), (0, 2, 1_000_002_000), (0, 3, 1_000_002_100)]
    path = tmp_path / "interactions.csv"
    path.write_text(
        "user_id\titem_id\tinteraction_type\tcreated_at\n"
        + "".join(f"{u}\t{i}\t1\t{ts}\n" for u, i, ts in rows)
    )
    ds, _ = prepare_dataset(path, cache_dir=tmp_path / "cache", preset="hrnn-xing")
    assert ds.info["preset_report"]["removed"]["items with < 20 interactions"]["interactions"] == 1
    assert (
        ds.csr.n_sessions + ds.info["dropped_sessions"] == ds.info["preset_report"]["after"]["sessions"] == 31
    )
    first = ds.csr.user_ptr[0]
    assert ds.csr.session_ptr[first + 1] - ds.csr.session_ptr[first] == 3


COLUMNS = {"user_col": "user", "item_col": "item", "time_col": "ts"}


def session_numbered_log(path) -> int:
    """A CSV log (user, item, ts, sid) whose sid numbers each user's sessions of three events, with gaps of 10 s to
    25 h inside and between them; returns its number of (user, sid) sessions."""
    gaps = (10, 600, 3600, 90_000, 120)
    rows, sessions = ["user,item,ts,sid"], 0
    for user in range(40):
        n, ts = 3 * (2 + user % 3), 1_000_000
        for t in range(n):
            ts += gaps[(user + t) % len(gaps)]
            rows.append(f"{user},{(user * 7 + t) % 13},{ts},{t // 3}")
        sessions += n // 3
    path.write_text("\n".join(rows) + "\n")
    return sessions


@pytest.mark.parametrize(
    ("options", "gap", "by_sid"),
    [
        ({"session_col": "sid"}, None, True),  # the log's sessions as they are, whatever the gaps inside
        ({"session_col": "sid", "session_gap": 1800}, 1800, True),  # asked for: also cut at gaps
        ({}, 1800, False),  # no session column: the 1800 s rule
    ],
)
def test_a_session_column_gives_the_sessions_unless_a_gap_is_asked_for(tmp_path, options, gap, by_sid):
    path = tmp_path / "sessnum.csv"
    pairs = session_numbered_log(path)
    ds, entry = prepare_dataset(path, cache_dir=tmp_path / "cache", **COLUMNS, **options)
    log = read_log(path, session_col="sid", **COLUMNS)
    packed = pack_sessions(log.user, log.item, log.timestamp, session_gap=gap or math.inf,
                           session=log.session if by_sid else None)  # fmt: skip
    expected = split_last_session(packed)
    for name in ("session_ptr", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(ds.csr, name), getattr(expected.csr, name))
    np.testing.assert_array_equal(ds.role, expected.role)
    assert ds.info["session_gap"] == gap
    assert (packed.n_sessions == pairs) == (gap is None)  # the gap rule cuts some of the log's sessions
    if not options:  # an unset gap is the 1800 s of the datasets cached before it could be unset
        assert prepare_dataset(path, cache_dir=tmp_path / "cache", session_gap=1800, **COLUMNS)[1] == entry


def test_a_recbole_session_id_column_gives_the_sessions_too(tmp_path):
    """RecBole's session_id is read without --session-col: its sessions are the log's, as with one."""
    csv = tmp_path / "sessnum.csv"
    pairs = session_numbered_log(csv)
    rows = [line.split(",") for line in csv.read_text().split()[1:]]
    inter = tmp_path / "log.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\tsession_id:token\n"
                     + "".join("\t".join(row) + "\n" for row in rows))  # fmt: skip
    ds, _ = prepare_dataset(inter, cache_dir=tmp_path / "cache")
    assert ds.info["session_gap"] is None
    gapped, _ = prepare_dataset(inter, cache_dir=tmp_path / "cache", session_gap=1800)
    assert gapped.info["session_gap"] == 1800 and gapped.csr.n_sessions > ds.csr.n_sessions
    log = read_log(inter)
    assert pack_sessions(log.user, log.item, log.timestamp, session_gap=math.inf, session=log.session).n_sessions \
        == pairs  # fmt: skip


def test_user_split_uses_the_seed(xing, tmp_path):
    a, _ = prepare_dataset(xing, cache_dir=tmp_path, split="user", seed=3, preset="none")
    log = read_log(xing)
    expected = split_by_user(pack_sessions(log.user, log.item, log.timestamp), seed=3)
    np.testing.assert_array_equal(a.role, expected.role)


def test_time_split_holds_out_the_latest_sessions(xing, tmp_path):
    ds, _ = prepare_dataset(xing, cache_dir=tmp_path, split="time")
    starts = ds.csr.timestamp[ds.csr.session_ptr[:-1]]
    assert starts[ds.role == TEST].min() >= starts[ds.role == TRAIN].max()


def test_cache_is_reused_and_invalidated(xing, tmp_path, monkeypatch):
    _, first = prepare_dataset(xing, cache_dir=tmp_path)

    def no_read(*args, **kwargs):
        raise AssertionError("a cached dataset was rebuilt")

    monkeypatch.setattr(prepare_module, "read_log", no_read)
    _, again = prepare_dataset(xing, cache_dir=tmp_path)
    assert again == first
    monkeypatch.undo()
    _, other_split = prepare_dataset(xing, cache_dir=tmp_path, split="user")
    _, other_gap = prepare_dataset(xing, cache_dir=tmp_path, session_gap=3600)
    changed = tmp_path / "changed.csv"
    changed.write_bytes(xing.read_bytes().replace(b"\t1\t", b"\t2\t", 1))
    _, other_file = prepare_dataset(changed, cache_dir=tmp_path)
    assert len({first, other_split, other_gap, other_file}) == 4


def test_failures_leave_nothing_in_the_cache(tmp_path):
    cache = tmp_path / "cache"
    tiny = tmp_path / "interactions.csv"
    tiny.write_text(
        "user_id\titem_id\tinteraction_type\tcreated_at\n1\t2\t1\t1446336000\n1\t3\t1\t1446336100\n"
    )
    with pytest.raises(ValueError, match="removed every interaction"):
        prepare_dataset(tiny, cache_dir=cache)
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n1,2,10\n1,3\n")
    with pytest.raises(BadRowsError, match=r"line\(s\) 3"):
        prepare_dataset(bad, cache_dir=cache)
    assert entries(cache) == []
    ds, _ = prepare_dataset(bad, cache_dir=cache, skip_bad_rows=True)
    assert ds.info["skipped_rows"] == 1 and ds.info["skipped_lines_head"] == [3]


def test_string_ids_keep_their_names(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\nann,b,1\nann,a,2\nbo,b,3\nbo,b,4000\n")
    ds, _ = prepare_dataset(path, cache_dir=tmp_path / "c", user_col="u", item_col="i", time_col="t")
    assert ds.info["item_names"] == ["a", "b"] and ds.info["user_names"] == ["ann", "bo"]
    assert ds.info["preset"] == "none"
    np.testing.assert_array_equal(
        np.asarray(ds.info["item_names"])[ds.csr.item_ids[ds.csr.item]], ["b", "a", "b", "b"]
    )


def test_default_is_the_synthetic_xing_log(tmp_path, monkeypatch):
    monkeypatch.setattr(
        prepare_module, "generate_xing", lambda out, seed: generate_xing(out, seed=seed, **SMALL)
    )
    ds, entry = prepare_dataset(cache_dir=tmp_path)
    assert (tmp_path / "synthetic-xing" / "interactions.csv").is_file()
    assert ds.info["format"] == "xing" and ds.info["preset"] == "hiertcn-xing" and ds.csr.n_interactions > 0
    assert prepare_dataset(cache_dir=tmp_path)[1] == entry


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "random"}, "split must be one of"),
        ({"preset": "gru4rec"}, "preset must be one of"),
        ({"session_gap": 0}, "session_gap"),
        ({"time_unit": "h"}, "time_unit"),
    ],
)
def test_bad_arguments(xing, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_dataset(xing, cache_dir=tmp_path, **kwargs)
    assert entries(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        prepare_dataset(tmp_path / "nope.csv", cache_dir=tmp_path)
