import numpy as np
import pytest
import torch
from tinylogs import TINY, make_csr

import hiertcn.evaluate
from hiertcn.batching import user_batches
from hiertcn.data.splits import TEST
from hiertcn.evaluate import evaluate, rank_targets, score_events
from hiertcn.metrics import ranking_metrics
from hiertcn.models import MODEL_NAMES, build_model
from hiertcn.train import fit
from tests.test_train import N_ITEMS, planted_dataset, small_config


def _log():
    csr = make_csr([[3, 25, 2], [1, 4], [4, 2, 5, 7], [6]], n_items=11, seed=3)
    role = np.zeros(csr.n_sessions, dtype=np.int64)
    last = csr.user_ptr[1:] - 1
    role[last] = TEST  # last-session-out; user 3 has only a test session
    role[5] = 1  # a validation session before user 2's test session
    return csr, role


def _model(name):
    torch.manual_seed(0)
    return build_model(name, n_items=11, **TINY[name]).double()


def _ranks(model, csr, role, **kw):
    parts = list(score_events(model, csr, role == TEST, **kw))
    ranks, users, index = (torch.cat(p) for p in zip(*parts))
    return ranks, users, index


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_test_event_is_scored_once_and_matches_direct_scoring(name):
    csr, role = _log()
    model = _model(name)
    ranks, users, index = _ranks(model, csr, role, batch_users=2)
    test_events = np.concatenate([np.arange(csr.session_ptr[s], csr.session_ptr[s + 1])
                                  for s in np.flatnonzero(role == TEST)])
    assert sorted(index.tolist()) == test_events.tolist()  # first event of each session included
    first_event_of_user = csr.session_ptr[csr.user_ptr[:-1]]
    assert users.tolist() == (np.searchsorted(first_event_of_user, index.numpy(), side="right") - 1).tolist()
    assert ranks.min() >= 1 and ranks.max() <= 11
    # Same ranks as scoring every user's full history at once, by hand.
    (batch,) = list(user_batches(csr, score_sessions=role == TEST))
    model.eval()
    with torch.no_grad():
        emb, _ = model(batch)
        scores = model.scores(emb)[batch.target_mask]
    expected = ranking_metrics(scores, batch.items[batch.target_mask])
    model.train()
    got = evaluate(model, (csr, role), batch_users=3)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)
    assert got["n_events"] == len(test_events) and got["n_users"] == 4
    # The first event of each scored session, and the rest, by hand from the ranks.
    first = torch.from_numpy(np.isin(index.numpy(), csr.session_ptr[np.flatnonzero(role == TEST)]))
    assert got["n_first"] == (role == TEST).sum() and got["n_later"] == len(test_events) - got["n_first"]
    assert got["first/mrr"] == pytest.approx((1 / ranks[first].double()).mean().item())
    assert got["later/recall@10"] == pytest.approx((ranks[~first] <= 10).double().mean().item())
    assert model.training  # the evaluator restores the mode


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_evaluation_never_sees_the_future(name):
    """Shuffling the events after t (later in the session and later sessions) leaves the ranks up to t alone."""
    csr, role = _log()
    model = _model(name)
    ranks, _, index = _ranks(model, csr, role)
    rng = np.random.default_rng(7)
    # user 0's test session is interactions 28..29; user 2's is 46..52 (after a validation session).
    changed_later = False
    for t in (28, 40, 46, 47, 50):
        user = int(np.searchsorted(csr.session_ptr[csr.user_ptr[1:]], t, side="right"))
        end = csr.session_ptr[csr.user_ptr[user + 1]]
        item = csr.item.copy()
        item[t + 1:end] = rng.permutation(item[t + 1:end])
        item[t + 1:end] = (item[t + 1:end] + 1) % 11  # also change them, so a shuffle of equal items still differs
        shuffled = type(csr)(**{**csr.__dict__, "item": item})
        r2, _, i2 = _ranks(model, shuffled, role)
        keep = index <= t
        assert torch.equal(i2, index)
        assert torch.equal(r2[keep], ranks[keep])
        changed_later |= not torch.equal(r2[~keep], ranks[~keep])
    assert changed_later  # the perturbation does reach the later predictions


def test_chunked_ranking_counts_ties_exactly():
    torch.manual_seed(0)
    model = build_model("moving_average", n_items=10, embedding_dim=4).double()
    with torch.no_grad():  # integer-valued tables make scores exact, and duplicate rows make exact ties
        model.out_weight.copy_(torch.randint(-3, 4, (10, 4)).double())
        model.out_weight[7] = model.out_weight[2]
        model.out_weight[9] = model.out_weight[2]
        model.out_bias.zero_()
    u = torch.randint(-2, 3, (13, 4)).double()
    y = torch.tensor([2, 7, 9, 0, 1, 3, 4, 5, 6, 8, 2, 7, 9])
    full = rank_targets(model, u, y)
    expected = (model.scores(u) >= model.scores(u).gather(1, y[:, None])).sum(1)
    assert torch.equal(full, expected)
    for chunk, budget in ((3, 7), (4, 1), (10, 20), (None, 4)):
        assert torch.equal(rank_targets(model, u, y, chunk_items=chunk, max_scores=budget), full)


def test_a_catalogue_beyond_max_scores_is_scored_in_slices(monkeypatch):
    model = build_model("moving_average", n_items=10, embedding_dim=4)
    held = []
    real_addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: held.append(real_addmm(*a, **k).numel()) or real_addmm(*a, **k))
    rank_targets(model, torch.randn(3, 4), torch.tensor([1, 2, 3]), max_scores=4)
    assert held and max(held) <= 4  # one row and at most four items at a time


def test_nan_target_scores_are_an_error_not_a_perfect_rank():
    # NaN >= NaN is False, so a NaN target would get rank 0 (recall 1, mrr inf) if nothing checked.
    model = build_model("moving_average", n_items=10, embedding_dim=4).double()
    u, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([1, 2, 3, 4, 5])
    u[3] = float("nan")
    for chunk in (None, 3):
        with pytest.raises(ValueError, match="score is NaN"):
            rank_targets(model, u, y, chunk_items=chunk)
    with pytest.raises(ValueError, match="score is NaN"):
        ranking_metrics(model.scores(u), y)


def test_nan_item_scores_count_against_the_target():
    # NaN >= t is False: NaN items would drop out of the count and lift the target to the top.
    assert ranking_metrics(torch.tensor([[float("nan"), float("nan"), 0.0]]), torch.tensor([2]))["mrr"] == 1 / 3
    model = build_model("moving_average", n_items=10, embedding_dim=4).double()
    with torch.no_grad():
        model.out_weight[[0, 6]] = float("nan")  # two items whose output embeddings diverged
    u, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([1, 2, 3, 4, 5])
    honest = (model.scores(u) >= model.scores(u).gather(1, y[:, None])).sum(1) + 2
    for chunk in (None, 3):
        assert torch.equal(rank_targets(model, u, y, chunk_items=chunk), honest)


def test_chunked_ranking_rejects_targets_outside_the_catalogue():
    model = build_model("moving_average", n_items=10, embedding_dim=4)
    for bad in (10, -1):
        with pytest.raises(ValueError, match="target must be item ids in"):
            rank_targets(model, torch.randn(2, 4), torch.tensor([3, bad]), chunk_items=3)


def test_evaluate_rejects_bad_data():
    csr, role = _log()
    model = _model("gru4rec")
    with pytest.raises(ValueError, match="role"):
        evaluate(model, (csr, role[:-1]))
    with pytest.raises(ValueError, match="roles"):
        evaluate(model, (csr, role), roles=(7,))
    with pytest.raises(TypeError, match="csr"):
        evaluate(model, csr)


def test_fit_evaluates_on_the_training_windows(tmp_path, monkeypatch):
    # Validation and test cut sessions into max_session_len windows exactly as the training batches do.
    seen = []
    real = hiertcn.evaluate.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_session_len"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hiertcn.evaluate, "evaluate", spy)
    model = build_model("hiertcn", n_items=N_ITEMS, embedding_dim=8, hidden_dim=8, channels=8)
    fit(model, planted_dataset(), small_config(epochs=1, max_session_len=3), run_dir=tmp_path / "w", progress=False)
    assert len(seen) == 2 and set(seen) == {3}  # one validation, one test


def test_evaluate_and_fit_need_a_model_that_scores_every_item_of_the_log(tmp_path):
    """Found from the sizes before any batch, not as an embedding's bare IndexError (a device assert on GPU)."""
    data = planted_dataset()
    model = build_model("gru4rec", n_items=data.csr.n_items - 1, embedding_dim=8, hidden_dim=8)
    match = f"the log has {data.csr.n_items} items but the model scores {data.csr.n_items - 1}"
    with pytest.raises(ValueError, match=match):
        evaluate(model, data)
    with pytest.raises(ValueError, match=match):
        fit(model, data, small_config(epochs=1), run_dir=tmp_path / "w", progress=False)
    # A larger catalogue than the log's is fine for ranking: the extra items are ranked too.
    bigger = build_model("gru4rec", n_items=data.csr.n_items + 2, embedding_dim=8, hidden_dim=8)
    assert evaluate(bigger, data)["n_events"] > 0
