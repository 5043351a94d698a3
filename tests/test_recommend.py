import json

import numpy as np
import pytest
import torch

from hiertcn.batching import user_batches
from hiertcn.models import MODEL_NAMES, build_model
from hiertcn.recommend import RequestTimeError, recommend, with_next_slot, write_recommendations
from tests.models.tinylogs import TINY
from tests.test_train import N_ITEMS, planted_dataset


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("max_session_len", [50, 5, 1])
def test_next_slot_scores_equal_those_of_the_true_next_item_position(name, max_session_len):
    """The extra slot sees the whole history and nothing else: it matches a batch whose history is one longer.

    With short windows some users' last window is full, so the slot must open a new window as training would.
    """
    data = planted_dataset(n_users=6)
    csr = data.csr
    torch.manual_seed(0)
    model = build_model(name, n_items=N_ITEMS, **TINY[name]).eval()
    # Hide each user's last interaction, ask for a recommendation, compare with the full history's last position.
    keep = np.ones(csr.n_interactions, dtype=bool)
    keep[csr.session_ptr[csr.user_ptr[1:]] - 1] = False
    removed_before = np.concatenate([[0], np.cumsum(~keep)])  # sessions have >= 2 items, none empties
    short = type(csr)(
        user_ptr=csr.user_ptr, session_ptr=csr.session_ptr - removed_before[csr.session_ptr],
        item=csr.item[keep], timestamp=csr.timestamp[keep], user_ids=csr.user_ids, item_ids=csr.item_ids,
    )  # fmt: skip
    last_len = np.diff(short.session_ptr)[short.user_ptr[1:] - 1]
    if max_session_len < 50:
        assert (last_len % max_session_len == 0).any()  # some last windows are full
    items, scores = recommend(model, short, np.arange(6), k=N_ITEMS, max_session_len=max_session_len)
    full = next(iter(user_batches(csr, np.arange(6), max_session_len=max_session_len)))
    with torch.no_grad():
        emb, _ = model(full, model.init_state(full.n_lanes) if model.carries_state else None)
        expected = model.scores(emb[full.cu_seqlens[full.lane_ptr[1:]] - 1])
    top = expected.topk(N_ITEMS, dim=1)
    torch.testing.assert_close(torch.from_numpy(scores), top.values)
    assert (items == csr.item_ids[top.indices.numpy()]).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_late_request_scores_as_the_first_item_of_a_new_session(name):
    """``at`` a session gap after the history: the slot is the first position of a new session, with its gap."""
    data = planted_dataset(n_users=6)
    csr = data.csr
    torch.manual_seed(0)
    options = {"gap_decay": "fixed", "gap_bandwidth": 3000.0} if name == "hiertcn" else {}  # the gap must count
    model = build_model(name, n_items=N_ITEMS, **TINY[name], **options).eval()
    # Drop each user's last session; the request comes at that session's start.
    last_session = csr.user_ptr[1:] - 1
    keep_session = np.ones(csr.n_sessions, dtype=bool)
    keep_session[last_session] = False
    lengths = np.diff(csr.session_ptr)
    keep = np.repeat(keep_session, lengths)
    short = type(csr)(
        user_ptr=csr.user_ptr - np.arange(csr.n_users + 1), session_ptr=np.concatenate([[0], np.cumsum(lengths[keep_session])]),
        item=csr.item[keep], timestamp=csr.timestamp[keep], user_ids=csr.user_ids, item_ids=csr.item_ids,
    )  # fmt: skip
    at = csr.timestamp[csr.session_ptr[last_session]]  # one request time per user: score them one by one
    full = next(iter(user_batches(csr, np.arange(6))))
    with torch.no_grad():
        emb, _ = model(full, model.init_state(full.n_lanes) if model.carries_state else None)
        expected = model.scores(emb[full.cu_seqlens[full.lane_ptr[1:] - 1]])  # each last session's first position
    for u in range(6):
        _, scores = recommend(model, short, [u], k=N_ITEMS, at=int(at[u]), session_gap=1800)
        torch.testing.assert_close(torch.from_numpy(scores[0]), expected[u].topk(N_ITEMS).values)
    # The same request without a time continues the last session instead: different scores for the
    # hierarchical models, whose state only moves at a session start.
    if name in ("hiertcn", "hrnn"):
        _, continued = recommend(model, short, [0], k=N_ITEMS)
        assert not np.allclose(continued[0], expected[0].topk(N_ITEMS).values.numpy())
    with pytest.raises(RequestTimeError, match="before the last interaction") as late:  # a ValueError
        recommend(model, short, [0, 1], k=3, at=int(short.timestamp[0]))
    last = short.timestamp[short.session_ptr[short.user_ptr[1:3]] - 1]  # users 0 and 1
    assert late.value.at == short.timestamp[0] and (last > late.value.at).any()
    np.testing.assert_array_equal(late.value.user_rows, np.flatnonzero(last > late.value.at))
    np.testing.assert_array_equal(late.value.last, last[last > late.value.at])


def test_with_next_slot_layout():
    data = planted_dataset(n_users=6)
    (batch,) = user_batches(data.csr, np.arange(6), max_session_len=3)
    slotted = with_next_slot(batch, 3)
    assert slotted.n_tokens == batch.n_tokens + 6 and int(slotted.target_mask.sum()) == 6
    assert (slotted.cu_seqlens[slotted.lane_ptr[1:]] - 1 == torch.nonzero(slotted.target_mask)[:, 0]).all()
    assert torch.equal(slotted.items[~slotted.target_mask], batch.items)
    # A full last window gets a new one-slot window (no reset, gap 0); the others grow by one.
    lengths, last = batch.cu_seqlens.diff(), batch.lane_ptr[1:] - 1
    full = lengths[last] == 3
    assert full.any() and not full.all()
    assert torch.equal(slotted.lane_ptr.diff(), batch.lane_ptr.diff() + full)
    new_last = slotted.lane_ptr[1:] - 1
    assert torch.equal(slotted.cu_seqlens.diff()[new_last], torch.where(full, 1, lengths[last] + 1))
    assert not slotted.new_user[new_last[full]].any() and (slotted.gap[new_last[full]] == 0).all()
    assert slotted.new_user.sum() == batch.new_user.sum()
    # With the request's gap: a session gap or more opens a window carrying it, less continues the last window.
    gap = torch.tensor([5000.0, 10.0, 5000.0, 10.0, 5000.0, 10.0])
    timed = with_next_slot(batch, 3, gap, session_gap=1800)
    opens = full | (gap >= 1800)
    assert torch.equal(timed.lane_ptr.diff(), batch.lane_ptr.diff() + opens)
    new_last = timed.lane_ptr[1:] - 1
    assert torch.equal(timed.gap[new_last[opens]], gap[opens])
    assert torch.equal(timed.cu_seqlens.diff()[new_last], torch.where(opens, 1, lengths[last] + 1))


def test_recommend_needs_an_interaction_per_user():
    data = planted_dataset(n_users=3)
    csr = data.csr
    empty = type(csr)(
        user_ptr=np.append(csr.user_ptr, csr.n_sessions), session_ptr=csr.session_ptr, item=csr.item,
        timestamp=csr.timestamp, user_ids=np.arange(4), item_ids=csr.item_ids,
    )  # fmt: skip: user row 3 has no sessions
    model = build_model("hiertcn", n_items=N_ITEMS, **TINY["hiertcn"]).eval()
    with pytest.raises(ValueError, match="at least one interaction"):
        recommend(model, empty, np.array([0, 3]), k=3)
    items, _ = recommend(model, empty, np.array([0, 2]), k=3)
    assert items.shape == (2, 3)


@pytest.mark.parametrize("delta", [-1, 1])
def test_recommend_needs_the_model_of_the_logs_catalogue(delta):
    """Fewer items: an embedding index error otherwise; more: top items with no raw id in the log."""
    csr = planted_dataset(n_users=3).csr
    model = build_model("gru4rec", n_items=csr.n_items + delta, **TINY["gru4rec"]).eval()
    with pytest.raises(ValueError, match=f"the log has {csr.n_items} items but the model scores {csr.n_items + delta}"):
        recommend(model, csr, np.array([0]), k=1)


@pytest.mark.parametrize("rows", [[3], [0, 5], [-1], [], [[0]]])
def test_recommend_rejects_user_rows_outside_the_log(rows):
    csr = planted_dataset(n_users=3).csr
    model = build_model("gru4rec", n_items=N_ITEMS, **TINY["gru4rec"]).eval()
    with pytest.raises(ValueError, match="user_rows"):
        recommend(model, csr, np.array(rows, dtype=np.int64), k=3)


def test_jsonl_recommendations_are_valid_json_with_short_float32_scores(tmp_path):
    scores = np.array([[0.2, np.nan], [np.inf, -1.5]], dtype=np.float32)
    path = write_recommendations(tmp_path / "recs.jsonl", ["a", "b"], np.array([[1, 2], [3, 4]]), scores)
    lines = [json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()]
    assert lines == [{"user": "a", "items": [1, 2], "scores": [0.2, None]},
                     {"user": "b", "items": [3, 4], "scores": [None, -1.5]}]  # fmt: skip


@pytest.mark.parametrize("name", ["hiertcn", "moving_average"])
def test_exclude_seen_leaves_out_each_users_history(name):
    data = planted_dataset(n_users=4)
    csr = data.csr
    model = build_model(name, n_items=N_ITEMS, **TINY[name]).eval()
    rows = np.array([2, 0, 3])
    everything, _ = recommend(model, csr, rows, k=N_ITEMS)
    items, scores = recommend(model, csr, rows, k=N_ITEMS, exclude_seen=True, batch_users=2)
    for row, user_items, user_scores, ranked in zip(rows, items, scores, everything):
        lo, hi = csr.session_ptr[csr.user_ptr[row]], csr.session_ptr[csr.user_ptr[row + 1]]
        seen = set(np.asarray(csr.item_ids)[csr.item[lo:hi]].tolist())
        n_unseen = N_ITEMS - len(seen)
        assert 0 < n_unseen < N_ITEMS
        # the unseen items first, in the order they had among all items; the seen ones last, at -inf
        assert user_items[:n_unseen].tolist() == [i for i in ranked.tolist() if i not in seen]
        assert set(user_items[n_unseen:].tolist()) == seen and np.isneginf(user_scores[n_unseen:]).all()
        assert np.isfinite(user_scores[:n_unseen]).all()
