import numpy as np
import torch

from hiertcn.batching import user_batches
from hiertcn.models import build_model
from hiertcn.recommend import recommend, with_next_slot
from tests.test_train import N_ITEMS, planted_dataset


def test_next_slot_scores_equal_those_of_the_true_next_item_position():
    """The extra slot sees the whole history and nothing else: it matches a batch whose history is one longer."""
    data = planted_dataset(n_users=6)
    csr = data.csr
    model = build_model("hiertcn", n_items=N_ITEMS, embedding_dim=8, hidden_dim=8, channels=8, levels=2).eval()
    # Hide each user's last interaction, ask for a recommendation, compare with the full history's last position.
    keep = np.ones(csr.n_interactions, dtype=bool)
    keep[csr.session_ptr[csr.user_ptr[1:]] - 1] = False
    removed_before = np.concatenate([[0], np.cumsum(~keep)])  # sessions have >= 2 items, none empties
    short = type(csr)(
        user_ptr=csr.user_ptr, session_ptr=csr.session_ptr - removed_before[csr.session_ptr],
        item=csr.item[keep], timestamp=csr.timestamp[keep], user_ids=csr.user_ids, item_ids=csr.item_ids,
    )  # fmt: skip
    items, scores = recommend(model, short, np.arange(6), k=N_ITEMS, max_session_len=50)
    full = next(iter(user_batches(csr, np.arange(6), max_session_len=50)))
    with torch.no_grad():
        emb, _ = model(full, model.init_state(full.n_lanes))
        expected = model.scores(emb[full.cu_seqlens[full.lane_ptr[1:]] - 1])
    top = expected.topk(N_ITEMS, dim=1)
    torch.testing.assert_close(torch.from_numpy(scores), top.values)
    assert (items == csr.item_ids[top.indices.numpy()]).all()


def test_with_next_slot_layout():
    data = planted_dataset(n_users=3)
    (batch,) = user_batches(data.csr, np.arange(3), max_session_len=4)
    slotted = with_next_slot(batch)
    assert slotted.n_tokens == batch.n_tokens + 3 and int(slotted.target_mask.sum()) == 3
    assert (slotted.cu_seqlens[slotted.lane_ptr[1:]] - 1 == torch.nonzero(slotted.target_mask)[:, 0]).all()
    assert torch.equal(slotted.items[~slotted.target_mask], batch.items)
