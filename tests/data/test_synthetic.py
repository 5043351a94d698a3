import numpy as np
import pytest

from hiertcn.data.readers import read_log
from hiertcn.data.synthetic import generate_xing

SMALL = {"n_users": 300, "n_items": 400, "n_topics": 20}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    files = generate_xing(tmp_path_factory.mktemp("syn"), seed=3, **SMALL)
    log = read_log(files.interactions)
    truth = np.load(files.truth)
    topic_of = dict(zip(truth["item_id"].tolist(), truth["item_topic"].tolist()))
    item_topic = np.array([topic_of[i] for i in log.item.tolist()])
    row_of_user = np.searchsorted(truth["user_id"], log.user)
    order = np.lexsort((log.timestamp, log.user))  # the generator writes in time order; group by user
    user, ts = log.user[order], log.timestamp[order]
    new_session = np.ones(len(user), dtype=bool)
    new_session[1:] = (user[1:] != user[:-1]) | (np.diff(ts) >= 1800)
    return {
        "files": files,
        "log": log,
        "truth": truth,
        "order": order,
        "item_topic": item_topic[order],
        "user_row": row_of_user[order],
        "new_session": new_session,
        "itype": log.interaction_type[order],
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_xing(tmp_path / "a", seed=7, **SMALL)
    b = generate_xing(tmp_path / "b", seed=7, **SMALL)
    c = generate_xing(tmp_path / "c", seed=8, **SMALL)
    assert a.interactions.read_bytes() == b.interactions.read_bytes()
    assert a.impressions.read_bytes() == b.impressions.read_bytes()
    assert a.interactions.read_bytes() != c.interactions.read_bytes()


def test_a_log_without_impressions_leaves_no_older_impressions_file(tmp_path):
    generate_xing(tmp_path, seed=0, **SMALL)
    files = generate_xing(tmp_path, seed=1, impressions=False, **SMALL)
    assert files.impressions is None and not (tmp_path / "impressions.csv").exists()  # --impressions auto finds none


def test_xing_format(small):
    files, log = small["files"], small["log"]
    assert files.interactions.read_text().splitlines()[0] == "user_id\titem_id\tinteraction_type\tcreated_at"
    assert set(np.unique(log.interaction_type)) == {1, 2, 3, 4}
    assert 0.01 < np.mean(log.interaction_type == 4) < 0.1
    assert np.all(np.diff(log.timestamp) >= 0)  # written in time order
    assert log.timestamp.min() > 1.4e9  # unix seconds
    assert files.impressions.read_text().splitlines()[0] == "user_id\tyear\tweek\titems"


def test_item_popularity_is_long_tailed(small):
    counts = np.sort(np.bincount(np.unique(small["log"].item, return_inverse=True)[1]))[::-1]
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.25  # uniform popularity would give 0.10


def test_sessions_stay_on_one_topic(small):
    topic, new = small["item_topic"], small["new_session"]
    walk = small["itype"] == 1
    session = np.cumsum(new) - 1
    first_topic = topic[new][session]
    later = ~new & walk
    same = np.mean(topic[later] == first_topic[later])
    assert same > 0.8  # only noise clicks (~5%) and exploration leave the topic; chance is ~1/20


def test_first_item_topic_comes_from_long_term_interests(small):
    truth, new = small["truth"], small["new_session"]
    interests = truth["user_topics"][small["user_row"][new]]
    hit = (interests == small["item_topic"][new][:, None]).any(axis=1)
    n_interests = (interests >= 0).sum(axis=1)
    chance = np.mean(n_interests / SMALL["n_topics"])
    assert hit.mean() > 0.8 and hit.mean() > 3 * chance


def test_within_session_gaps_below_and_between_sessions_above_the_rule(small):
    ts, new, user = (
        small["log"].timestamp[small["order"]],
        small["new_session"],
        small["log"].user[small["order"]],
    )
    same_user = np.ones(len(ts), dtype=bool)
    same_user[1:] = user[1:] == user[:-1]
    gaps = np.diff(ts, prepend=ts[0])
    assert np.all(gaps[~new] < 1800) and np.all(gaps[new & same_user][1:] >= 1800)


def test_default_size_survives_the_hiertcn_preset(tmp_path):
    files = generate_xing(tmp_path, impressions=False)
    log = read_log(files.interactions)
    assert 100_000 <= len(log) <= 250_000
    keep = log.interaction_type != 4
    item, user = log.item[keep], log.user[keep]
    for _ in range(10):  # the hiertcn-xing filters to a fixed point, written out independently of presets.py
        _, inv, cnt = np.unique(item, return_inverse=True, return_counts=True)
        ok = cnt[inv] >= 50
        item, user = item[ok], user[ok]
        _, inv, cnt = np.unique(user, return_inverse=True, return_counts=True)
        ok = (cnt[inv] >= 10) & (cnt[inv] <= 500)
        item, user = item[ok], user[ok]
    assert len(item) > 0.7 * len(log)
    assert 1000 <= len(np.unique(item)) <= 2000
    assert len(np.unique(user)) > 2000


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("n_users", 0),
        ("n_items", 0),
        ("n_topics", 1),
        ("n_neighbours", 0),
        ("session_gap_mean", -1.0),
        ("p_noise", 1.5),
        ("drift", 2.0),
    ],
)
def test_bad_arguments(tmp_path, arg, value):
    with pytest.raises(ValueError, match=arg):
        generate_xing(tmp_path, **{**SMALL, arg: value})


def test_neither_long_term_nor_last_item_alone_predicts_well(small):
    """Topic of the next item: the user's most frequent topic so far wins at a session's first item,
    the previous item's topic wins inside a session; so a model needs both levels."""
    topic, new, user = small["item_topic"], small["new_session"], small["log"].user[small["order"]]
    majority = np.full(len(topic), -1)
    counts = None
    for r in range(len(topic)):
        if r == 0 or user[r] != user[r - 1]:
            counts = np.zeros(SMALL["n_topics"], dtype=np.int64)
        elif counts.any():
            majority[r] = counts.argmax()
        counts[topic[r]] += 1
    previous = np.concatenate([[-1], topic[:-1]])
    has_history = majority >= 0
    first = new & has_history
    later = ~new & has_history & (small["itype"] == 1)

    def accuracy(guess, mask):
        return np.mean(guess[mask] == topic[mask])

    assert accuracy(majority, first) > accuracy(previous, first) + 0.03
    assert accuracy(previous, later) > accuracy(majority, later) + 0.2


@pytest.mark.parametrize(("arg", "value"), [("n_users", 2.5), ("n_neighbours", 1.5), ("n_users", True)])
def test_counts_must_be_ints(tmp_path, arg, value):
    with pytest.raises(TypeError, match=f"{arg} must be an int"):
        generate_xing(tmp_path, **{**SMALL, arg: value})
