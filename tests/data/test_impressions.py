"""Impressions per interaction: the (user, ISO week) mapping, the Dataset arrays, the cache."""

import datetime
import itertools
import json

import numpy as np
import pytest

from hiertcn.data import Dataset, Impressions, generate_xing, pack_sessions, prepare_dataset, read_impressions
from hiertcn.data.impressions import iso_year_week, map_impressions
from hiertcn.data.splits import TEST, split_last_session


def utc(text):
    return int(datetime.datetime.fromisoformat(text + "+00:00").timestamp())


def as_lists(imp_ptr, imp_item):
    return [imp_item[a:b].tolist() for a, b in itertools.pairwise(imp_ptr)]


def test_iso_year_week_matches_the_calendar():
    ts = np.random.default_rng(0).integers(0, 2_500_000_000, 3000)
    year, week = iso_year_week(ts)
    expected = [datetime.datetime.fromtimestamp(int(t), datetime.UTC).isocalendar()[:2] for t in ts]
    assert list(zip(year.tolist(), week.tolist())) == expected


def test_each_interaction_gets_its_users_week():
    # 2015-12-27 is the Sunday ending ISO week 2015-52, 2015-12-28 starts 2015-53, 2016-01-04 starts 2016-01.
    user = np.array([7, 7, 7, 7, 3])
    item = np.array([100, 200, 100, 300, 200])
    t = np.array([utc("2015-12-27T23:59:59"), utc("2015-12-28T00:00:00"), utc("2016-01-03T23:00:00"),
                  utc("2016-01-04T00:00:00"), utc("2016-01-04T10:00:00")])  # fmt: skip
    csr = pack_sessions(user, item, t)  # item index: 100 -> 0, 200 -> 1, 300 -> 2; user 3 first
    imp = Impressions(
        user=np.array([7, 7, 7, 9, 7]),
        year=np.array([2015, 2015, 2016, 2016, 2015]),
        week=np.array([52, 53, 1, 1, 52]),
        item_ptr=np.array([0, 3, 4, 6, 7, 8]),
        items=np.array([200, 555, 300, 100, 300, 200, 100, 100]),  # 555 is not in the catalogue
    )
    imp_ptr, imp_item = map_impressions(csr, imp)
    assert imp_ptr.dtype == imp_item.dtype == np.int64
    # user 3 has no row; 2015-52 has two rows (concatenated in file order); 2016-01-03 is still in 2015-53.
    assert as_lists(imp_ptr, imp_item) == [[], [1, 2, 0], [0], [0], [2, 1]]
    capped = map_impressions(csr, imp, max_per_event=2)
    assert as_lists(*capped) == [[], [1, 2], [0], [0], [2, 1]]
    with pytest.raises(ValueError, match="max_per_event"):
        map_impressions(csr, imp, max_per_event=0)
    with pytest.raises(TypeError, match="Impressions"):
        map_impressions(csr, (imp_ptr, imp_item))


@pytest.fixture(scope="module")
def xing(tmp_path_factory):
    return generate_xing(tmp_path_factory.mktemp("src"), seed=3, n_users=120, n_items=200, n_topics=8,
                         n_impressed=12)  # fmt: skip


def test_prepare_maps_the_impressions_next_to_a_xing_log(xing, tmp_path):
    ds, entry = prepare_dataset(xing.interactions, cache_dir=tmp_path)  # impressions="auto"
    assert ds.impressions is not None and len(ds.imp_ptr) == ds.csr.n_interactions + 1
    assert (np.diff(ds.imp_ptr) > 0).mean() > 0.5  # most lists keep an item the preset kept
    # The preset drops rare items: impressions of dropped items are gone, the rest keep their index.
    raw = read_impressions(xing.impressions)
    assert not np.isin(raw.items, ds.csr.item_ids).all()
    assert as_lists(ds.imp_ptr, ds.imp_item) == as_lists(*map_impressions(ds.csr, raw, max_per_event=20))
    # Spot-check against a direct lookup: interaction n shows its user's week, catalogue items only.
    event_user = np.repeat(ds.csr.user_ids, np.diff(ds.csr.session_ptr[ds.csr.user_ptr]))
    year, week = iso_year_week(ds.csr.timestamp)
    for n in np.random.default_rng(0).choice(ds.csr.n_interactions, 40, replace=False):
        row = np.flatnonzero((raw.user == event_user[n]) & (raw.year == year[n]) & (raw.week == week[n]))
        shown = (
            np.concatenate([raw.items[raw.item_ptr[r] : raw.item_ptr[r + 1]] for r in row])
            if len(row)
            else []
        )
        shown = [int(np.searchsorted(ds.csr.item_ids, i)) for i in shown if i in ds.csr.item_ids]
        assert ds.imp_item[ds.imp_ptr[n] : ds.imp_ptr[n + 1]].tolist() == shown[:20]
    assert ds.info["impressions"] == str(xing.impressions.resolve())

    # The cache entry holds them: a second call loads the same arrays from disk.
    again, same_entry = prepare_dataset(xing.interactions, cache_dir=tmp_path)
    assert same_entry == entry
    np.testing.assert_array_equal(again.imp_ptr, ds.imp_ptr)
    np.testing.assert_array_equal(again.imp_item, ds.imp_item)

    # "none" (and a log without impressions) gives the plain dataset under another key.
    plain, other = prepare_dataset(xing.interactions, cache_dir=tmp_path, impressions="none")
    assert other != entry and plain.impressions is None
    np.testing.assert_array_equal(plain.csr.item, ds.csr.item)
    capped, _ = prepare_dataset(xing.interactions, cache_dir=tmp_path, impressions=xing.impressions,
                                max_impressions=3)  # fmt: skip
    assert np.diff(capped.imp_ptr).max() == 3


def test_an_items_list_that_is_not_item_ids_names_the_file(tmp_path):
    path = tmp_path / "impressions.csv"
    path.write_text("user_id\tyear\tweek\titems\n1\t2016\t3\t5,6,\n")
    with pytest.raises(ValueError, match="impressions.csv: an items list holds something other than"):
        read_impressions(path)


def test_prepare_rejects_bad_impressions_arguments(xing, tmp_path):
    with pytest.raises(FileNotFoundError, match="impressions"):
        prepare_dataset(xing.interactions, cache_dir=tmp_path, impressions=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="max_impressions"):
        prepare_dataset(xing.interactions, cache_dir=tmp_path, max_impressions=0)
    csv = tmp_path / "log.csv"
    csv.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{k % 3},i{k % 5},{1000 + k}\n" for k in range(30))
    )
    with pytest.raises(ValueError, match="integer user and item ids"):
        prepare_dataset(csv, cache_dir=tmp_path, impressions=xing.impressions)
    assert prepare_dataset(csv, cache_dir=tmp_path)[0].impressions is None  # auto: only next to a XING log


def small_dataset():
    csr = pack_sessions(np.array([1, 1, 1, 2, 2]), np.array([5, 6, 5, 6, 7]), np.array([0, 10, 5000, 0, 10]))
    return split_last_session(csr, n_valid=0, min_test_len=1)


def test_dataset_round_trip_with_and_without_impressions(tmp_path):
    base = small_dataset()
    assert (base.role == TEST).any()
    imp_ptr, imp_item = np.array([0, 2, 2, 3, 4, 6]), np.array([1, 2, 0, 2, 1, 0])
    ds = Dataset(base.csr, base.role, dict(base.info), imp_ptr=imp_ptr, imp_item=imp_item)
    loaded = Dataset.load(ds.save(tmp_path / "with"))
    np.testing.assert_array_equal(loaded.imp_ptr, imp_ptr)
    np.testing.assert_array_equal(loaded.imp_item, imp_item)
    np.testing.assert_array_equal(loaded.role, base.role)
    assert Dataset.load(base.save(tmp_path / "without")).impressions is None

    np.save(tmp_path / "with" / "imp_item.npy", imp_item[::-1].copy())  # tampered after saving
    with pytest.raises(ValueError, match="imp_item.npy checksum"):
        Dataset.load(tmp_path / "with")


def test_dataset_validates_its_impressions():
    base = small_dataset()
    good = np.array([0, 2, 2, 3, 4, 6]), np.array([1, 2, 0, 2, 1, 0])
    with pytest.raises(ValueError, match="together"):
        Dataset(base.csr, base.role, imp_ptr=good[0]).validate()
    with pytest.raises(ValueError, match="n_interactions"):
        Dataset(base.csr, base.role, imp_ptr=good[0][:-1], imp_item=good[1]).validate()
    with pytest.raises(ValueError, match="outside"):
        Dataset(base.csr, base.role, imp_ptr=good[0], imp_item=good[1] + 5).validate()
    with pytest.raises(TypeError, match="int64"):
        Dataset(base.csr, base.role, imp_ptr=good[0].astype(np.int32), imp_item=good[1]).validate()


def test_a_version_1_dataset_still_loads(tmp_path):
    base = small_dataset()
    path = base.save(tmp_path / "old")
    header = json.loads((path / "dataset.json").read_text())
    header.update(version=1, role_crc32=header.pop("crc32")["role"])  # the layout before impressions
    (path / "dataset.json").write_text(json.dumps(header))
    loaded = Dataset.load(path)
    np.testing.assert_array_equal(loaded.role, base.role)
    assert loaded.impressions is None
