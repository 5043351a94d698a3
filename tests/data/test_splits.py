import json

import numpy as np
import pytest

from hiertcn.data.splits import TEST, TRAIN, VALID, Dataset, split_by_time, split_by_user, split_last_session
from hiertcn_kernels import SessionCSR, pack_sessions


@pytest.fixture(params=[0, 1, 2])
def csr(request):
    """~80 users, several sessions each, a long-tailed catalogue (so held-out sessions meet unseen items)."""
    rng = np.random.default_rng(request.param)
    n = 4000
    user = rng.integers(0, 80, n) * 3 + 5
    item = (rng.pareto(1.2, n) * 20).astype(np.int64) + 100
    # Distinct times per user: (user id, timestamp) identifies an interaction across the split.
    timestamp = rng.permutation(n * 50)[:n] * 10
    return pack_sessions(user, item, timestamp, session_gap=20_000)


def interaction_keys(csr: SessionCSR, sessions: np.ndarray) -> set[tuple[int, int, int]]:
    """(raw user, time, raw item) of every interaction in ``sessions``."""
    session_user = np.repeat(np.arange(csr.n_users), np.diff(csr.user_ptr))
    out = set()
    for s in sessions:
        lo, hi = csr.session_ptr[s], csr.session_ptr[s + 1]
        u = csr.user_ids[session_user[s]]
        out.update((int(u), int(t), int(csr.item_ids[i])) for t, i in zip(csr.timestamp[lo:hi], csr.item[lo:hi]))
    return out


def check_split(original: SessionCSR, ds: Dataset, filtered: bool):
    ds.validate()
    csr = ds.csr
    np.testing.assert_array_equal(csr.item_ids, original.item_ids)  # catalogue kept whole
    np.testing.assert_array_equal(csr.user_ids, original.user_ids)
    train = interaction_keys(csr, ds.sessions(TRAIN))
    valid = interaction_keys(csr, ds.sessions(VALID))
    test = interaction_keys(csr, ds.sessions(TEST))
    everything = interaction_keys(original, np.arange(original.n_sessions))
    # No leakage: what a training loader reads (TRAIN sessions) holds no held-out interaction.
    assert not train & test and not train & valid and not valid & test
    assert train | valid | test <= everything
    assert len(test) > 0 and len(train) > 0
    if filtered:
        train_items = {k[2] for k in train}
        assert {k[2] for k in test | valid} <= train_items
        assert (np.diff(csr.session_ptr)[ds.role != TRAIN] >= 2).all()
        assert len(everything) - len(train | valid | test) == ds.info["dropped_interactions"]
    else:
        assert train | valid | test == everything
    return train, valid, test


def test_split_by_user_gives_every_session_its_users_role(csr):
    ds = split_by_user(csr, seed=3)
    check_split(csr, ds, filtered=False)
    user_of = np.repeat(np.arange(csr.n_users), np.diff(csr.user_ptr))
    user_role = np.full(csr.n_users, -1)
    for s, r in enumerate(ds.role):
        assert user_role[user_of[s]] in (-1, r)
        user_role[user_of[s]] = r
    counts = np.bincount(user_role, minlength=3)
    assert counts[TRAIN] == round(0.8 * csr.n_users) and counts[VALID] == round(0.1 * csr.n_users)
    assert not np.array_equal(split_by_user(csr, seed=4).role, ds.role)


def test_split_last_session_holds_out_each_users_last_sessions(csr):
    ds = split_last_session(csr, n_valid=1, n_test=1, min_test_len=2)
    check_split(csr, ds, filtered=True)
    new = ds.csr
    for u in range(new.n_users):
        roles = ds.role[new.user_ptr[u] : new.user_ptr[u + 1]]
        # Held-out sessions come last and in order: TRAIN..., [VALID], [TEST].
        assert np.all(np.diff(roles) >= 0)
        assert (roles == TEST).sum() <= 1 and (roles == VALID).sum() <= 1
        n_orig = csr.user_ptr[u + 1] - csr.user_ptr[u]
        if n_orig <= 2:
            assert (roles == TRAIN).all()
    # Each TEST session is (a filtered copy of) the user's last session in the original log.
    orig_last = {int(csr.user_ids[u]): csr.user_ptr[u + 1] - 1 for u in range(csr.n_users)}
    for s in ds.sessions(TEST):
        u = np.searchsorted(new.user_ptr, s, side="right") - 1
        last = interaction_keys(csr, [orig_last[int(new.user_ids[u])]])
        assert interaction_keys(new, [s]) <= last
    assert ds.info["split"] == "last_session" and ds.info["test_sessions"] == len(ds.sessions(TEST))
    assert ds.info["dropped_interactions"] > 0  # the long tail made some test items unseen
    # Only held-out sessions lost interactions: the training part is each user's untouched prefix.
    for u in range(new.n_users):
        n_train = (ds.role[new.user_ptr[u] : new.user_ptr[u + 1]] == TRAIN).sum()
        first = csr.user_ptr[u]
        assert interaction_keys(new, range(new.user_ptr[u], new.user_ptr[u] + n_train)) == interaction_keys(
            csr, range(first, first + n_train)
        )


def test_split_by_time_uses_session_start(csr):
    cutoff = int(np.quantile(csr.timestamp, 0.8))
    valid_cutoff = int(np.quantile(csr.timestamp, 0.7))
    ds = split_by_time(csr, cutoff, valid_cutoff=valid_cutoff)
    check_split(csr, ds, filtered=True)
    start = ds.csr.timestamp[ds.csr.session_ptr[:-1]]
    assert (start[ds.role == TEST] >= cutoff).all()
    assert ((start[ds.role == VALID] >= valid_cutoff) & (start[ds.role == VALID] < cutoff)).all()
    assert (start[ds.role == TRAIN] < valid_cutoff).all()
    with pytest.raises(ValueError, match="valid_cutoff"):
        split_by_time(csr, 10, valid_cutoff=20)


def test_split_by_user_gives_a_zero_fraction_no_users():
    # Python's round() halves to even, so 5 users at 0.5/0.5 once gave 2 + 2 and the leftover user to TEST.
    for n_users, fractions, expect in ((5, (0.5, 0.5, 0.0), [2, 3, 0]), (7, (0.8, 0.2, 0.0), [6, 1, 0]),
                                       (7, (0.8, 0.0, 0.2), [6, 0, 1]), (7, (0.0, 0.5, 0.5), [0, 4, 3])):
        csr = pack_sessions(np.arange(n_users), np.zeros(n_users, np.int64), np.zeros(n_users, np.int64))
        counts = np.bincount(split_by_user(csr, fractions=fractions).role, minlength=3)
        assert counts.tolist() == expect, fractions


def test_split_by_time_keeps_empty_sessions_in_train():
    # a hand-built CSR: user 0's middle and last sessions are empty
    csr = SessionCSR(np.array([0, 4]), np.array([0, 2, 2, 4, 4]), np.array([0, 1, 0, 1]), np.array([1, 2, 30, 31]),
                     np.array([5]), np.array([0, 1]))
    ds = split_by_time(csr, cutoff=10, min_test_len=1)
    assert ds.role.tolist() == [TRAIN, TRAIN, TEST, TRAIN]


def test_bad_split_arguments(csr):
    with pytest.raises(ValueError, match="fractions"):
        split_by_user(csr, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="n_test"):
        split_last_session(csr, n_test=-1)


def test_dataset_save_load_roundtrip(csr, tmp_path):
    ds = split_last_session(csr)
    ds.save(tmp_path / "ds")
    loaded = Dataset.load(tmp_path / "ds")
    np.testing.assert_array_equal(loaded.role, ds.role)
    np.testing.assert_array_equal(loaded.csr.item, ds.csr.item)
    assert loaded.info == ds.info
    role = bytearray((tmp_path / "ds" / "role.npy").read_bytes())
    role[-1] = (role[-1] + 1) % 3
    (tmp_path / "ds" / "role.npy").write_bytes(bytes(role))
    with pytest.raises(ValueError, match="role.npy checksum mismatch"):
        Dataset.load(tmp_path / "ds")


def test_dataset_save_replaces_only_a_saved_dataset(csr, tmp_path):
    ds = split_last_session(csr)
    ds.save(tmp_path / "ds")
    ds.save(tmp_path / "ds")  # a previous save is replaced
    assert Dataset.load(tmp_path / "ds").info == ds.info
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved Dataset"):
        ds.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"


def test_dataset_load_names_what_is_wrong(csr, tmp_path):
    path = split_last_session(csr).save(tmp_path / "ds")
    header_file = path / "dataset.json"
    header = json.loads(header_file.read_text())

    def load_with(text):
        header_file.write_text(text)
        return Dataset.load(path)

    with pytest.raises(ValueError, match="not a saved Dataset"):
        Dataset.load(tmp_path)
    with pytest.raises(ValueError, match="corrupt"):
        load_with("{not json")
    with pytest.raises(ValueError, match="header"):
        load_with(json.dumps({**header, "version": 99}))
    with pytest.raises(ValueError, match="no role checksum"):
        load_with(json.dumps({**header, "crc32": {}}))
    with pytest.raises(ValueError, match="unknown array 'extra'"):
        load_with(json.dumps({**header, "crc32": {**header["crc32"], "extra": 0}}))
    header_file.write_text(json.dumps(header))
    (path / "role.npy").write_bytes(b"\x93NUMPY")  # truncated
    with pytest.raises(ValueError, match="role.npy is missing, truncated or corrupt"):
        Dataset.load(path)
