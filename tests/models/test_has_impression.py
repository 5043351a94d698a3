"""Impressions in the models and the training step: HierTCN(has_impression), the hinge's negatives."""

import dataclasses
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tinylogs import TINY, make_csr

from hiertcn.batching import user_batches
from hiertcn.evaluate import evaluate
from hiertcn.losses import HingeLoss
from hiertcn.models import build_model
from hiertcn.recommend import recommend
from hiertcn.train import LossStep

N_ITEMS = 11


def random_impressions(csr, seed=0):
    """``(imp_ptr, imp_item)``: 0..5 random items per interaction (some lists empty)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, csr.n_interactions)
    lengths[:2] = (0, 3)
    imp_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return imp_ptr, rng.integers(0, N_ITEMS, int(imp_ptr[-1])).astype(np.int64)


@pytest.fixture
def data():
    csr = make_csr([[3, 7, 2], [1, 4], [6, 2, 5]], n_items=N_ITEMS, seed=2)
    return csr, random_impressions(csr)


def hiertcn(has_impression=True, seed=0):
    torch.manual_seed(seed)
    return (
        build_model("hiertcn", n_items=N_ITEMS, **TINY["hiertcn"], has_impression=has_impression)
        .double()
        .eval()
    )


def one_batch(csr, impressions, **kw):
    (batch,) = list(user_batches(csr, max_session_len=5, impressions=impressions, **kw))
    return batch


def test_impression_mean_is_the_mean_embedding_of_each_tokens_items(data):
    csr, impressions = data
    model, batch = hiertcn(), one_batch(csr, impressions)
    emb = model.item_emb.weight
    expected = torch.stack([
        emb[batch.imp_item[a:b]].mean(0) if b > a else emb.new_zeros(emb.shape[1])
        for a, b in zip(batch.imp_ptr[:-1].tolist(), batch.imp_ptr[1:].tolist())
    ])  # fmt: skip
    torch.testing.assert_close(model._impression_mean(batch), expected)


def test_without_impressions_shown_it_is_the_plain_model(data):
    """Empty lists add zeros: the output equals has_impression=False with the same weights."""
    csr, _ = data
    empty = (np.zeros(csr.n_interactions + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    model, plain = hiertcn(), hiertcn(has_impression=False)
    state = {k: v for k, v in model.state_dict().items() if k != "project.weight"}
    d = model.item_emb.embedding_dim
    w = model.project.weight.detach()
    plain.load_state_dict({**state, "project.weight": torch.cat([w[:, :d], w[:, 2 * d :]], 1)})
    batch = one_batch(csr, empty)
    torch.testing.assert_close(model(batch)[0], plain(batch)[0], rtol=1e-12, atol=1e-12)
    assert model.project.weight.shape[1] == plain.project.weight.shape[1] + d


def test_impressions_change_later_outputs_only(data):
    """Position t reads the impressions of the user's interactions before t, never those of t or later."""
    csr, impressions = data
    model = hiertcn()
    batch = one_batch(csr, impressions)
    base, _ = model(batch)
    gen = torch.Generator().manual_seed(3)
    changed_any = False
    for t in (0, 2, 4, 9, 12, 15, 20):
        lane = int(torch.searchsorted(batch.cu_seqlens[batch.lane_ptr[1:]], torch.tensor(t), right=True))
        end = int(batch.cu_seqlens[batch.lane_ptr[lane + 1]])
        lo, hi = int(batch.imp_ptr[t]), int(batch.imp_ptr[end])
        items = batch.imp_item.clone()
        items[lo:hi] = torch.randint(0, N_ITEMS, (hi - lo,), generator=gen)
        out, _ = model(dataclasses.replace(batch, imp_item=items))
        torch.testing.assert_close(out[: t + 1], base[: t + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[end:], base[end:], rtol=1e-12, atol=1e-12)  # other lanes
        changed_any |= not torch.allclose(out[t + 1 : end], base[t + 1 : end])
    assert changed_any  # the impressions do reach the later positions


def test_a_model_that_reads_impressions_needs_them(data):
    csr, impressions = data
    with pytest.raises(ValueError, match="has_impression"):
        hiertcn()(one_batch(csr, None))
    role = np.zeros(csr.n_sessions, dtype=np.int8)
    role[[2, 4, 7]] = 2  # each user's last session is TEST
    with pytest.raises(ValueError, match="has_impression"):
        evaluate(hiertcn(), (csr, role))
    scored = evaluate(hiertcn(), SimpleNamespace(csr=csr, role=role, impressions=impressions))
    assert scored["n_events"] == 2 + 4 + 5
    hidden = SimpleNamespace(csr=csr, role=role, impressions=random_impressions(csr, seed=9))
    assert evaluate(hiertcn(), hidden)["mrr"] != scored["mrr"]


def test_recommend_passes_impressions(data):
    csr, impressions = data
    model = hiertcn()
    items, scores = recommend(model, csr, [0, 2], k=3, impressions=impressions)
    other = random_impressions(csr, seed=4)
    _, other_scores = recommend(model, csr, [0, 2], k=3, impressions=other)
    assert items.shape == (2, 3) and not np.allclose(scores, other_scores)


def test_training_step_uses_the_batch_impressions_as_hinge_negatives(data):
    """LossStep hands each target its impressed items (lists of 0..5, all 5 taken); pads fill with popularity
    samples (all on item 10)."""
    csr, impressions = data
    model = hiertcn(has_impression=False)
    batch = one_batch(csr, impressions)
    counts = np.zeros(N_ITEMS)
    counts[10] = 1
    loss_fn = HingeLoss(num_negatives=5, item_counts=counts)
    loss, _ = LossStep(model, loss_fn)(batch, None)

    user_emb, _ = model(batch)
    weight, _ = model.output_embeddings()
    u = F.normalize(user_emb, dim=-1)
    rows = []
    for t in range(batch.n_tokens):
        shown = batch.imp_item[batch.imp_ptr[t] : batch.imp_ptr[t + 1]].tolist()
        negatives = [j for j in shown + [10] * (5 - len(shown)) if j != int(batch.items[t])]
        if negatives:
            pos = F.logsigmoid(u[t] @ weight[batch.items[t]])
            rows.append(torch.relu(F.logsigmoid(weight[negatives] @ u[t]) - pos + 0.1).mean())
    torch.testing.assert_close(loss, torch.stack(rows).mean())

    ignored, _ = LossStep(model, loss_fn)(dataclasses.replace(batch, imp_ptr=None, imp_item=None), None)
    assert not torch.allclose(ignored, loss)  # without impressions every negative is item 10


def test_training_step_draws_fewer_negatives_than_impressions_afresh_each_step(data):
    """BPR's one negative per target is drawn from the whole list each step, not always its first item."""
    csr, impressions = data
    batch = one_batch(csr, impressions)
    seen = []

    class Recording:
        takes_impressions, num_negatives = True, 1

        def __call__(self, model, user_emb, targets, batch=None, impressions=None):
            seen.append(impressions[:, 0])
            return user_emb.sum()

    step = LossStep(hiertcn(has_impression=False), Recording())
    for _ in range(40):
        step(batch, None)
    mask = batch.target_mask
    lists = [batch.imp_item[a:b].tolist() for a, b in zip(batch.imp_ptr[:-1][mask], batch.imp_ptr[1:][mask])]
    drawn = torch.stack(seen, 1).tolist()
    assert all(set(d) == (set(li) if li else {-1}) for d, li in zip(drawn, lists))  # every item of each list


@pytest.mark.interpreter
def test_triton_and_reference_agree_with_impressions(data, monkeypatch):
    if importlib.util.find_spec("hiertcn_kernels.triton.segment") is None:
        pytest.skip("Triton segment kernels not available")
    csr, impressions = data
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("HIERTCN_BACKEND", backend)
        model = hiertcn().float()
        batch = one_batch(csr, impressions)
        out, _ = model(batch)
        F.cross_entropy(model.scores(out), batch.items).backward()
        results[backend] = (out.detach(), {n: p.grad for n, p in model.named_parameters()})
    (ref, ref_grads), (tri, tri_grads) = results["reference"], results["triton"]
    assert (tri - ref).norm() / ref.norm() < 1e-5
    for name, g in ref_grads.items():
        assert (tri_grads[name] - g).norm() / g.norm().clamp(min=1e-12) < 1e-4, name


def test_batches_carry_impressions_only_for_readers(data):
    from hiertcn.config import Config
    from hiertcn.losses import build_loss
    from hiertcn.train import batch_source

    csr, impressions = data
    dataset = SimpleNamespace(csr=csr, role=np.zeros(csr.n_sessions, dtype=np.int8), impressions=impressions)
    config = Config(n_queues=2)

    def carried(model, loss):
        return next(iter(batch_source(model, dataset, config, loss_fn=build_loss(loss)).batches(0))).has_impressions

    assert carried(hiertcn(), "softmax") and carried(hiertcn(has_impression=False), "hinge")
    assert not carried(hiertcn(has_impression=False), "softmax")
