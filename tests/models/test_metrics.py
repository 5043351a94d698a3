import math

import numpy as np
import pytest
import torch

from hiertcn.metrics import METRIC_KEYS, MetricAccumulator, combine_results, ranking_metrics, target_ranks


def test_ranks_count_ties_against_target():
    scores = torch.tensor([
        [0.1, 0.9, 0.5, 0.3],  # target 1 strictly best: rank 1
        [0.5, 0.5, 0.5, 0.5],  # all tied: rank 4 (last)
        [0.2, 0.7, 0.7, 0.1],  # tie with one other item: rank 2
        [0.9, 0.8, 0.7, 0.6],  # target 3 strictly worst: rank 4
    ])
    target = torch.tensor([1, 0, 2, 3])
    assert target_ranks(scores, target).tolist() == [1, 4, 2, 4]


def test_ranking_metrics_known_answers():
    n_items = 30
    ranks = [1, 3, 7, 12, 25]
    # Build scores where item e's target sits at the wanted rank: target score = n_items - rank + 0.5 among distinct ints.
    scores = torch.arange(n_items, 0, -1, dtype=torch.float32).repeat(len(ranks), 1)  # item j scores n_items - j
    target = torch.tensor([r - 1 for r in ranks])  # item r-1 has rank r
    m = ranking_metrics(scores, target)
    assert set(m) == set(METRIC_KEYS)
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(2 / 5)
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 5)
    assert m["mrr@20"] == pytest.approx(sum(1 / r for r in ranks if r <= 20) / 5)
    assert m["mrp"] == pytest.approx(sum(r / n_items for r in ranks) / 5)


def test_constant_scores_rank_last():
    m = ranking_metrics(torch.ones(3, 8), torch.tensor([0, 4, 7]))
    assert m["recall@5"] == 0.0 and m["mrp"] == 1.0 and m["mrr"] == pytest.approx(1 / 8)


def test_accumulator_per_event_and_per_user():
    acc = MetricAccumulator(n_items=10)
    acc.add(torch.tensor([1, 2, 10]), torch.tensor([0, 0, 0]))  # user 0: three events
    acc.add(torch.tensor([5]), [3])  # user 3: one event
    out = acc.result()
    assert out["n_events"] == 4 and out["n_users"] == 2
    assert out["recall@1"] == pytest.approx(1 / 4)
    assert out["user/recall@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0.1 + 0.2) / 4)
    assert out["user/mrr"] == pytest.approx(((1 + 0.5 + 0.1) / 3 + 0.2) / 2)
    assert out["user/mrp"] == pytest.approx(((0.1 + 0.2 + 1.0) / 3 + 0.5) / 2)
    assert not math.isnan(out["mrr@20"])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="target"):
        target_ranks(torch.rand(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="scores"):
        target_ranks(torch.rand(5), torch.tensor([0]))
    with pytest.raises(ValueError, match="no events"):
        MetricAccumulator(3).result()
    # A float or bool target is not an item id: it must not be truncated to one.
    for target in (torch.tensor([1.9]), torch.tensor([True])):
        with pytest.raises(TypeError, match="target must be an integer tensor of item ids"):
            ranking_metrics(torch.tensor([[0.0, 1.0, 2.0]]), target)
    with pytest.raises(TypeError, match="scores must be real numbers"):
        ranking_metrics(torch.tensor([[True, False]]), torch.tensor([0]))


def test_ranking_metrics_takes_numpy_arrays():
    scores, target = np.array([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]]), np.array([1, 0])
    assert ranking_metrics(scores, target) == ranking_metrics(torch.from_numpy(scores), torch.from_numpy(target))
    assert ranking_metrics(scores, target)["mrr"] == pytest.approx(0.75)


def test_accumulator_splits_first_and_later_events():
    acc = MetricAccumulator(n_items=10)
    acc.add(torch.tensor([1, 2, 10]), [0, 0, 0], first=torch.tensor([True, False, False]))
    acc.add(torch.tensor([5, 4]), [3, 3], first=[True, False])
    out = acc.result()
    assert out["n_first"] == 2 and out["n_later"] == 3
    assert out["first/mrr"] == pytest.approx((1 + 0.2) / 2)
    assert out["later/mrr"] == pytest.approx((0.5 + 0.1 + 0.25) / 3)
    assert out["later/recall@5"] == pytest.approx(2 / 3) and out["first/mrp"] == pytest.approx((0.1 + 0.5) / 2)
    # The split is reported only when every add said which events are first.
    acc.add(torch.tensor([3]), [4])
    assert "first/mrr" not in acc.result()
    only_first = MetricAccumulator(n_items=10)
    only_first.add(torch.tensor([2]), [0], first=[True])
    out = only_first.result()
    assert out["first/mrr"] == 0.5 and out["n_later"] == 0 and math.isnan(out["later/mrr"])
    with pytest.raises(ValueError, match="first"):
        only_first.add(torch.tensor([2, 3]), [0, 0], first=[True])
    again = only_first.result()  # a rejected add leaves the sums alone
    assert again["n_events"] == 1 and again["first/mrr"] == 0.5 and again["n_later"] == 0


def test_combined_results_equal_one_accumulator_over_every_user():
    events = [  # (rank, user, first): user 2 has only first events, so its part has no later events
        (1, 0, True), (3, 0, False), (10, 0, False), (2, 1, True), (7, 1, False), (4, 2, True), (5, 2, True),
    ]  # fmt: skip
    whole = MetricAccumulator(n_items=10)
    parts = {0: MetricAccumulator(n_items=10), 1: MetricAccumulator(n_items=10)}
    for rank, user, first in events:
        for acc in (whole, parts[int(user == 2)]):
            acc.add(torch.tensor([rank]), [user], first=[first])
    expected = whole.result()
    got = combine_results([p.result() for p in parts.values()])
    assert math.isnan(parts[1].result()["later/mrr"])  # the NaN of an empty part must not leak
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert (got["n_first"], got["n_later"], got["n_users"]) == (4, 3, 3)
    with pytest.raises(ValueError, match="no results"):
        combine_results([])


def test_combine_results_needs_the_same_keys_in_every_part():
    with_split = {"n_events": 2, "n_users": 1, "n_first": 1, "n_later": 1, "mrr": 0.5, "first/mrr": 1.0,
                  "later/mrr": 0.0}  # fmt: skip
    plain = {"n_events": 2, "n_users": 1, "mrr": 0.25}
    for parts in ([with_split, plain], [plain, with_split]):  # a KeyError one way, split keys dropped the other
        with pytest.raises(ValueError, match="same keys"):
            combine_results(parts)
