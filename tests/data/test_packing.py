import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiertcn.data.pandas_packer import pack_sessions_pandas
from hiertcn_kernels import SessionCSR, pack_sessions

FIELDS = ("user_ptr", "session_ptr", "item", "timestamp", "user_ids", "item_ids")


def assert_same_csr(a: SessionCSR, b: SessionCSR):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == np.int64, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def check_against_pandas(user, item, timestamp, **kw) -> SessionCSR:
    csr = pack_sessions(user, item, timestamp, **kw)
    csr.validate()
    assert_same_csr(csr, pack_sessions_pandas(user, item, timestamp, **kw))
    return csr


@st.composite
def logs(draw):
    n = draw(st.integers(1, 60))
    n_users = draw(st.integers(1, 6))
    # Raw ids: small dense, or huge and negative (forces the two-stage sort / radix factorisation).
    id_base = draw(st.sampled_from([0, -(2**62), 2**40]))
    id_step = draw(st.sampled_from([1, 7, 2**55]))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    # A small time range makes ties common; a huge one exercises wide keys.
    t_hi = draw(st.sampled_from([5, 5000, 2**62]))
    times = draw(st.lists(st.integers(0, t_hi), min_size=n, max_size=n))
    if draw(st.booleans()):
        times = sorted(times)  # the common time-ordered log
    user = np.array(users, dtype=np.int64) * id_step + id_base
    item = np.array(items, dtype=np.int64) * id_step - id_base
    session = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))) if draw(st.booleans()) else None
    gap = draw(st.sampled_from([1, 3, 1800, 2.5, float("inf")]))
    return user, item, np.array(times, dtype=np.int64), session, gap


@settings(max_examples=300, deadline=None)
@given(logs())
def test_matches_pandas_on_random_logs(log):
    user, item, timestamp, session, gap = log
    check_against_pandas(user, item, timestamp, session_gap=gap, session=session)


@pytest.mark.parametrize("time_order", ["shuffled", "sorted"])
@pytest.mark.parametrize("id_scale", [1, 2**50])
def test_matches_pandas_on_large_logs(time_order, id_scale):
    # Large enough for several threads' chunks in every radix pass.
    rng = np.random.default_rng(0)
    n = 200_000
    user = rng.integers(0, 3000, n) * id_scale
    item = rng.integers(0, 5000, n) * id_scale
    timestamp = rng.integers(1_600_000_000, 1_600_000_000 + 30 * 86400, n)
    if time_order == "sorted":
        timestamp.sort()
    csr = check_against_pandas(user, item, timestamp, session_gap=3600)
    assert 3000 * 0.9 < csr.n_users <= 3000 and csr.n_sessions > csr.n_users


def test_gap_equal_to_session_gap_starts_a_new_session():
    user = np.array([1, 1, 1, 1])
    item = np.array([10, 11, 12, 13])
    timestamp = np.array([0, 1799, 3599, 3600])  # gaps 1799, 1800, 1
    csr = check_against_pandas(user, item, timestamp)
    np.testing.assert_array_equal(csr.session_ptr, [0, 2, 4])


def test_ties_keep_input_order_and_users_ascend():
    user = np.array([7, 3, 7, 3, 7])
    item = np.array([50, 40, 30, 20, 10])
    timestamp = np.array([5, 9, 5, 1, 5])
    csr = check_against_pandas(user, item, timestamp)
    np.testing.assert_array_equal(csr.user_ids, [3, 7])
    np.testing.assert_array_equal(csr.item_ids[csr.item], [20, 40, 50, 30, 10])
    np.testing.assert_array_equal(csr.user_ptr, [0, 1, 2])


def test_session_column_cuts_without_a_gap():
    user = np.array([1, 1, 1, 2])
    item = np.array([1, 2, 3, 4])
    timestamp = np.array([0, 1, 2, 3])
    session = np.array([5, 5, 6, 6])
    csr = check_against_pandas(user, item, timestamp, session=session)
    np.testing.assert_array_equal(csr.session_ptr, [0, 2, 3, 4])  # user change cuts even with the same session id


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint64, np.int8])
def test_accepts_any_integer_dtype(dtype):
    rng = np.random.default_rng(1)
    user, item, ts = (rng.integers(0, 100, 50).astype(dtype) for _ in range(3))
    csr = pack_sessions(user, item, ts, session_gap=20)
    assert_same_csr(csr, pack_sessions(user.astype(np.int64), item.astype(np.int64), ts.astype(np.int64), session_gap=20))


def test_counts_read_as_attributes_or_calls():
    import pickle

    csr = pack_sessions(np.array([7, 7, 3]), np.array([1, 2, 1]), np.array([0, 5000, 9]))
    assert (csr.n_users, csr.n_sessions, csr.n_interactions, csr.n_items) == (2, 3, 3, 2)
    assert (csr.n_users(), csr.n_sessions(), csr.n_interactions(), csr.n_items()) == (2, 3, 3, 2)  # DESIGN.md's "methods"
    assert type(pickle.loads(pickle.dumps(csr.n_items))) is int and np.arange(csr.n_users).tolist() == [0, 1]


@pytest.mark.parametrize("pack_sessions", [pack_sessions, pack_sessions_pandas])  # the same contract
def test_bad_inputs_raise_clear_errors(pack_sessions):
    u, i, t = np.array([1, 2]), np.array([3, 4]), np.array([5, 6])
    with pytest.raises(ValueError, match="timestamp contains NaN"):
        pack_sessions(u, i, np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="timestamp must be integer"):
        pack_sessions(u, i, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="timestamp must be non-negative"):
        pack_sessions(u, i, np.array([1, -2]))
    with pytest.raises(ValueError, match="item has length 3"):
        pack_sessions(u, np.array([1, 2, 3]), t)
    with pytest.raises(ValueError, match="session has length 1"):
        pack_sessions(u, i, t, session=np.array([1]))
    with pytest.raises(ValueError, match="empty"):
        pack_sessions(np.array([], np.int64), np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(TypeError, match="user must be an integer array"):
        pack_sessions(np.array([1.0, 2.0]), i, t)
    with pytest.raises(TypeError, match="item must be an integer array"):
        pack_sessions(u, np.array(["a", "b"]), t)
    with pytest.raises(ValueError, match="user must be 1-D"):
        pack_sessions(np.array([[1, 2]]), i, t)
    with pytest.raises(ValueError, match="session_gap must be positive"):
        pack_sessions(u, i, t, session_gap=0)
    with pytest.raises(TypeError, match="session_gap"):
        pack_sessions(u, i, t, session_gap="30")
    with pytest.raises(ValueError, match="session_gap must be positive"):
        pack_sessions(u, i, t, session_gap=float("nan"))


# ---------------------------------------------------------------- save / load / validate


@pytest.fixture
def csr():
    rng = np.random.default_rng(2)
    n = 500
    return pack_sessions(rng.integers(0, 30, n), rng.integers(100, 200, n), rng.integers(0, 50_000, n))


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(csr, tmp_path, mmap):
    path = csr.save(tmp_path / "log")
    loaded = SessionCSR.load(path, mmap=mmap)
    assert_same_csr(loaded, csr)
    assert isinstance(loaded.item, np.memmap) == mmap
    assert sorted(os.listdir(tmp_path)) == ["log"]  # no temporary left behind


def test_save_replaces_an_existing_directory(csr, tmp_path):
    csr.save(tmp_path / "log")
    smaller = pack_sessions(np.array([1, 1]), np.array([2, 3]), np.array([0, 5]))
    smaller.save(tmp_path / "log")
    assert_same_csr(SessionCSR.load(tmp_path / "log"), smaller)
    assert sorted(os.listdir(tmp_path)) == ["log"]


def test_save_refuses_to_replace_what_it_did_not_save(csr, tmp_path):
    """Only a saved SessionCSR or an empty directory is replaced: a mistyped path deletes nothing."""
    other = tmp_path / "results"
    (other / "sub").mkdir(parents=True)
    (other / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved SessionCSR"):
        csr.save(other)
    assert (other / "important.txt").read_text() == "keep me" and (other / "sub").is_dir()
    saved = csr.save(tmp_path / "log")
    with pytest.raises(FileExistsError, match="header.json exists"):  # a file of a save is not a save
        csr.save(saved / "header.json")
    (saved / "header.json").write_text('{"format": "something.else"}')
    with pytest.raises(FileExistsError):
        csr.save(saved)
    with pytest.raises(FileExistsError):
        csr.save(other / "important.txt")
    (tmp_path / "empty").mkdir()
    assert_same_csr(SessionCSR.load(csr.save(tmp_path / "empty")), csr)
    assert not list(tmp_path.glob(".*"))  # refusals leave no temporary behind


def test_load_rejects_a_truncated_file(csr, tmp_path):
    path = csr.save(tmp_path / "log")
    data = (path / "item.npy").read_bytes()
    (path / "item.npy").write_bytes(data[: len(data) - 16])
    for mmap in (True, False):
        with pytest.raises(ValueError, match="item.npy"):
            SessionCSR.load(path, mmap=mmap)


def test_load_rejects_a_tampered_file(csr, tmp_path):
    path = csr.save(tmp_path / "log")
    raw = bytearray((path / "item.npy").read_bytes())
    # Swap two different item indices: still a valid-looking layout, only the checksum can tell.
    first, last = len(raw) - 8 * csr.n_interactions, len(raw) - 8
    j = next(k for k in range(1, csr.n_interactions) if csr.item[k] != csr.item[0])
    a, b = first, first + 8 * j
    raw[a : a + 8], raw[b : b + 8] = raw[b : b + 8], raw[a : a + 8]
    assert last > first
    (path / "item.npy").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        SessionCSR.load(path)


def test_load_rejects_missing_or_inconsistent_parts(csr, tmp_path):
    path = csr.save(tmp_path / "log")
    (path / "header.json").write_text((path / "header.json").read_text().replace('"<i8"', '"<i4"', 1))
    with pytest.raises(ValueError, match="header says"):
        SessionCSR.load(path)
    path = csr.save(tmp_path / "log")
    (path / "user_ids.npy").unlink()
    with pytest.raises(ValueError, match="user_ids.npy"):
        SessionCSR.load(path)
    (path / "header.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        SessionCSR.load(path)
    with pytest.raises(ValueError, match="header.json is missing"):
        SessionCSR.load(tmp_path / "nowhere")


def test_load_validates_the_layout(csr, tmp_path):
    item = csr.item.copy()
    item[3] = csr.n_items  # out of range, saved with a matching checksum
    bad = SessionCSR(csr.user_ptr, csr.session_ptr, item, csr.timestamp, csr.user_ids, csr.item_ids)
    bad.save(tmp_path / "bad")
    with pytest.raises(ValueError, match="outside the item range"):
        SessionCSR.load(tmp_path / "bad")


def test_validate_names_the_broken_field(csr):
    def broken(**change):
        return SessionCSR(**{**{f: getattr(csr, f) for f in FIELDS}, **change})

    ptr = csr.session_ptr.copy()
    ptr[2], ptr[3] = ptr[3], ptr[2]
    with pytest.raises(ValueError, match="session_ptr must be non-decreasing"):
        broken(session_ptr=ptr).validate()
    with pytest.raises(ValueError, match=r"user_ptr\[-1\]"):
        broken(user_ptr=csr.user_ptr[:-1]).validate()
    with pytest.raises(TypeError, match="item must be int64"):
        broken(item=csr.item.astype(np.int32)).validate()
    ts = csr.timestamp.copy()
    ts[1] = ts[0] - 1  # both in user 0: time goes backwards
    assert csr.session_ptr[csr.user_ptr[1]] > 1
    with pytest.raises(ValueError, match=r"timestamp\[1\]"):
        broken(timestamp=ts).validate()
    with pytest.raises(ValueError, match="item_ids must be strictly ascending"):
        broken(item_ids=csr.item_ids[::-1].copy()).validate()


@pytest.mark.parametrize("time_order", ["shuffled", "sorted"])
def test_matches_pandas_with_long_users_and_many_ties(time_order):
    # Dense ids (the fused path), users of hundreds of rows (merge sort) and few distinct times (ties).
    rng = np.random.default_rng(1)
    n = 300_000
    user = rng.integers(0, 1000, n) + 5
    item = rng.integers(0, 20_000, n)
    timestamp = rng.integers(0, 400, n) * 1000
    if time_order == "sorted":
        timestamp.sort()
    check_against_pandas(user, item, timestamp, session_gap=1500)
