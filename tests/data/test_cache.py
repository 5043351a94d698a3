import json
import os

import numpy as np
import pytest

from hiertcn.data import cache as cache_module
from hiertcn.data.cache import build_cached, cache_key
from hiertcn.data.splits import Dataset, split_last_session
from hiertcn_kernels import pack_sessions


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id\titem_id\tinteraction_type\tcreated_at\n1\t2\t1\t100\n1\t3\t1\t200\n")
    return path


def test_key_changes_with_every_input(source, tmp_path):
    base = cache_key(source, preset="hiertcn-xing", session_gap=1800, split="last_session")
    assert base == cache_key(source, split="last_session", session_gap=1800, preset="hiertcn-xing")
    assert base != cache_key(source, preset="hiertcn-xing", session_gap=1801, split="last_session")
    assert base != cache_key(source, preset="hiertcn-xing", session_gap=1800, split="user")
    assert base != cache_key(None, preset="hiertcn-xing", session_gap=1800, split="last_session")
    other = tmp_path / "other.csv"
    other.write_bytes(source.read_bytes())
    assert base == cache_key(other, preset="hiertcn-xing", session_gap=1800, split="last_session")  # content, not name
    source.write_text(source.read_text() + "2\t2\t1\t300\n")
    assert base != cache_key(source, preset="hiertcn-xing", session_gap=1800, split="last_session")


def test_key_changes_with_the_data_revision(source, monkeypatch):
    # Code that changes what an entry holds bumps DATA_REVISION, so older entries are not served.
    base = cache_key(source, split="last_session")
    monkeypatch.setattr(cache_module, "DATA_REVISION", cache_module.DATA_REVISION + 1)
    assert cache_key(source, split="last_session") != base


def test_key_of_a_huge_file_uses_size_mtime_and_edges(source, monkeypatch):
    monkeypatch.setattr(cache_module, "FULL_HASH_LIMIT", 8)
    monkeypatch.setattr(cache_module, "EDGE_BYTES", 4)
    base = cache_key(source)
    os.utime(source, ns=(0, 10**18))
    assert cache_key(source) != base
    touched = cache_key(source)
    data = bytearray(source.read_bytes())
    data[-2] = ord("9")
    source.write_bytes(bytes(data))
    os.utime(source, ns=(0, 10**18))
    assert cache_key(source) != touched  # the last bytes changed


def test_key_of_a_directory_covers_its_files(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1\t2\t5\t100\n")
    base = cache_key(tmp_path / "ml")
    (tmp_path / "ml" / "u.item").write_text("2|x\n")
    assert cache_key(tmp_path / "ml") != base


def test_bad_key_inputs(tmp_path):
    with pytest.raises(TypeError, match="not JSON-like"):
        cache_key(None, weird=object())
    with pytest.raises(FileNotFoundError):
        cache_key(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="key"):
        build_cached(tmp_path, "../escape", lambda d: None)


def test_builds_once_then_reuses(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "data.txt").write_text("built")

    root = tmp_path / "cache"
    entry = build_cached(root, "k1", build)
    assert build_cached(root, "k1", build) == entry
    assert len(calls) == 1 and calls[0] != entry
    assert (entry / "data.txt").read_text() == "built"
    assert sorted(os.listdir(root)) == ["k1"]


def test_failed_build_leaves_nothing(tmp_path):
    def build(tmp):
        (tmp / "half.npy").write_bytes(b"partial")
        raise RuntimeError("reader crashed")

    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="reader crashed"):
        build_cached(root, "k1", build)
    assert os.listdir(root) == []


def test_entry_from_another_version_or_unmarked_is_rebuilt(tmp_path):
    root = tmp_path / "cache"
    n = []

    def build(tmp):
        n.append(1)
        (tmp / "data.txt").write_text(str(len(n)))

    entry = build_cached(root, "k1", build)
    marker = json.loads((entry / "cache.json").read_text())
    (entry / "cache.json").write_text(json.dumps({**marker, "hiertcn_version": "0.0.0"}))
    assert (build_cached(root, "k1", build) / "data.txt").read_text() == "2"
    (entry / "cache.json").unlink()
    assert (build_cached(root, "k1", build) / "data.txt").read_text() == "3"
    assert sorted(os.listdir(root)) == ["k1"]


def test_caches_a_prepared_dataset(tmp_path):
    rng = np.random.default_rng(0)
    csr = pack_sessions(rng.integers(0, 20, 600), rng.integers(0, 30, 600), rng.integers(0, 10**6, 600))
    key = cache_key(None, split="last_session", seed=0)
    entry = build_cached(tmp_path, key, lambda tmp: split_last_session(csr).save(tmp / "dataset"))
    ds = Dataset.load(entry / "dataset")
    np.testing.assert_array_equal(ds.csr.item, split_last_session(csr).csr.item)
