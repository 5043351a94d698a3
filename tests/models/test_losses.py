import math

import pytest
import torch
import torch.nn.functional as F
from tinylogs import TINY, small_log

from hiertcn.batching import user_batches
from hiertcn.losses import (
    LOSS_NAMES,
    LOSSES,
    SampledSoftmaxLoss,
    build_loss,
    linear_cross_entropy,
    sample_items,
)
from hiertcn.models import build_model


class _Table(torch.nn.Module):
    """A scoring table alone: enough of the Recommender interface for the losses."""

    def __init__(self, n_items, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_items, dim, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.randn(n_items, dtype=torch.float64) * 0.1)

    def output_embeddings(self):
        return self.weight, self.bias

    def scores(self, u):
        return u @ self.weight.t() + self.bias


def test_softmax_is_cross_entropy_over_all_items():
    table = _Table(7, 4)
    u, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 3, 6, 3, 1])
    expected = F.cross_entropy(u @ table.weight.t() + table.bias, y)
    torch.testing.assert_close(build_loss()(table, u, y), expected)


@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 7, 11, 50])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_cross_entropy_matches_cross_entropy_value_and_gradients(chunk_rows, dtype):
    """Odd chunk sizes leave a short last chunk; grad_output != 1 checks the backward's scaling."""
    torch.manual_seed(0)
    u = torch.randn(11, 5, dtype=dtype, requires_grad=True)
    w = torch.randn(13, 5, dtype=dtype, requires_grad=True)
    b = (torch.randn(13, dtype=dtype) * 0.3).requires_grad_()
    y = torch.tensor([0, 12, 3, 3, 7, 1, 12, 5, 9, 2, 0])
    expected = F.cross_entropy(torch.addmm(b, u, w.t()), y)
    got = linear_cross_entropy(u, w, b, y, chunk_rows)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got, expected, **tol)
    reference_grads = torch.autograd.grad(expected * 2.5, (u, w, b))
    for g, r in zip(torch.autograd.grad(got * 2.5, (u, w, b)), reference_grads):
        torch.testing.assert_close(g, r, **tol)


def test_linear_cross_entropy_gradcheck():
    torch.manual_seed(1)
    u = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([5, 0, 2, 5])
    assert torch.autograd.gradcheck(lambda u, w, b: linear_cross_entropy(u, w, b, y, 3), (u, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_cross_entropy_in_half_precision_over_a_catalogue_past_fp16_range(dtype):
    """70,000 near-uniform logits sum past fp16's 65,504: the softmax must not overflow to an inf loss."""
    torch.manual_seed(0)
    u32, w32 = torch.randn(4, 8) * 0.01, torch.randn(70_000, 8) * 0.01
    y = torch.tensor([0, 1, 69_999, 5])
    u, w = u32.to(dtype).requires_grad_(), w32.to(dtype).requires_grad_()
    b = torch.zeros(70_000, dtype=dtype, requires_grad=True)
    loss = linear_cross_entropy(u, w, b, y)
    expected = F.cross_entropy(torch.addmm(b.float(), u.float(), w.float().t()), y)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(u, w, b, y), expected, rtol=1e-4, atol=1e-4)
    grad_u, grad_b = torch.autograd.grad(loss, (u, b))
    assert grad_u.dtype == dtype and torch.isfinite(grad_u).all()
    (ref_u,) = torch.autograd.grad(expected, (u,))
    torch.testing.assert_close(grad_u.float(), ref_u.float(), rtol=0.05, atol=1e-5)
    assert (grad_b[:4] != 0).all()  # the softmax part survives, not just the one-hot term
    with torch.autocast("cpu", dtype=dtype):  # fp32 inputs: autocast would run the products in half again
        torch.testing.assert_close(linear_cross_entropy(u32, w32, b.float(), y), expected, rtol=1e-4, atol=1e-4)


def test_linear_cross_entropy_frozen_table():
    """Only the inputs that need a gradient get one (a frozen output table and bias, say)."""
    torch.manual_seed(3)
    u = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = torch.tensor([0, 4, 1, 1, 3, 2])
    (got,) = torch.autograd.grad(linear_cross_entropy(u, w, b, y, 4), u)
    (expected,) = torch.autograd.grad(F.cross_entropy(u @ w.t() + b, y), u)
    torch.testing.assert_close(got, expected)


def test_linear_cross_entropy_without_gradients_and_empty():
    torch.manual_seed(2)
    u, w, b = torch.randn(9, 4), torch.randn(7, 4), torch.randn(7)
    y = torch.randint(0, 7, (9,))
    with torch.no_grad():
        got = linear_cross_entropy(u.requires_grad_(), w, b, y, 4)
    assert not got.requires_grad
    torch.testing.assert_close(got, F.cross_entropy(u @ w.t() + b, y))
    assert torch.isnan(linear_cross_entropy(u[:0], w, b, y[:0]))  # as F.cross_entropy: a mean over nothing


def test_linear_cross_entropy_rejects_bad_targets_and_chunks():
    u, w, b = torch.randn(2, 3), torch.randn(4, 3), torch.randn(4)
    for bad in ([0, 4], [-1, 2]):
        with pytest.raises(ValueError, match="targets"):
            linear_cross_entropy(u, w, b, torch.tensor(bad))
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(u, w, b, torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="chunk_rows"):
        build_loss("softmax", chunk_rows=0)


@pytest.mark.parametrize("tied", [False, True])
def test_softmax_loss_gradients_of_a_model_match_cross_entropy(tied):
    """Every parameter's gradient, including a tied table that also feeds the input embeddings."""
    (batch,) = list(user_batches(small_log()))
    torch.manual_seed(0)
    model = build_model("hiertcn", n_items=9, **TINY["hiertcn"], tied=tied).double()
    params = [p for p in model.parameters()]

    def grads(loss_of):
        user_emb, _ = model(batch)
        return torch.autograd.grad(loss_of(user_emb), params)

    expected = grads(lambda u: F.cross_entropy(model.scores(u), batch.items))
    got = grads(lambda u: build_loss("softmax", chunk_rows=7)(model, u, batch.items))
    for (name, _), g, r in zip(model.named_parameters(), got, expected):
        torch.testing.assert_close(g, r, msg=name)


def test_sampled_softmax_log_q_correction_values():
    counts = torch.tensor([1.0, 3.0, 6.0])
    loss = SampledSoftmaxLoss(num_negatives=4, in_batch=True, item_counts=counts)
    cands = torch.tensor([0, 1, 2, 2])
    # 5 rows: 4 other in-batch targets + 4 samples, popularity q = counts / 10.
    expected = torch.log(8 * counts[cands].double() / 10)
    torch.testing.assert_close(loss.log_expected_counts(cands, 5, 3), expected)


@pytest.mark.parametrize("item_counts", [None, [5.0, 1.0, 1.0, 2.0, 8.0, 3.0]])
def test_sampled_softmax_converges_to_full_softmax(item_counts):
    """With many samples the importance-weighted partition function matches the full one."""
    table = _Table(6, 3)
    u, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 4, 5])
    full = build_loss("softmax")(table, u, y).item()
    sampled = build_loss("sampled_softmax", num_negatives=200_000, in_batch=False, item_counts=item_counts)
    assert sampled(table, u, y).item() == pytest.approx(full, rel=0.01)
    # Without the correction the estimate is far off: the log-Q term matters.
    uncorrected = SampledSoftmaxLoss(num_negatives=200_000, in_batch=False, item_counts=item_counts)
    uncorrected.log_expected_counts = lambda c, n, i: torch.zeros(c.shape, dtype=torch.float64)
    assert abs(uncorrected(table, u, y).item() - full) > 1.0


def test_sampled_softmax_in_batch_negatives_are_corrected_by_popularity():
    """In-batch negatives are other rows' targets, drawn from the popularity: corrected by it, a large
    batch estimates the full softmax; corrected as if they were uniform, it does not."""
    gen = torch.Generator().manual_seed(0)
    n_items, n = 30, 3000
    popularity = torch.full((n_items,), 0.5 / (n_items - 1))
    popularity[0] = 0.5  # item 0 is half of the targets
    y = torch.multinomial(popularity, n, replacement=True, generator=gen)
    table, u = _Table(n_items, 4), torch.randn(n, 4, dtype=torch.float64, generator=gen)
    full = build_loss("softmax")(table, u, y).item()
    counts = torch.bincount(y, minlength=n_items)
    in_batch = build_loss("sampled_softmax", num_negatives=0, item_counts=counts)
    assert in_batch(table, u, y).item() == pytest.approx(full, rel=0.01)
    as_if_uniform = build_loss("sampled_softmax", num_negatives=0, item_counts=torch.ones(n_items))
    assert abs(as_if_uniform(table, u, y).item() - full) > 0.2


def test_sampled_softmax_in_batch_masks_accidental_hits():
    table = _Table(4, 3)
    u, y = torch.randn(3, 3, dtype=torch.float64), torch.tensor([1, 1, 2])
    loss = build_loss("sampled_softmax", num_negatives=0, in_batch=True, item_counts=[1, 1, 1, 1])
    # Row 0 and row 1 share target 1: the other's column is a hit, so only item 2 is a negative for them.
    w, b = table.output_embeddings()
    logit = u @ w.t() + b
    corr = math.log(2 * 0.25)
    expected = torch.stack([
        torch.logsumexp(torch.stack([logit[0, 1], logit[0, 2] - corr]), 0) - logit[0, 1],
        torch.logsumexp(torch.stack([logit[1, 1], logit[1, 2] - corr]), 0) - logit[1, 1],
        torch.logsumexp(torch.stack([logit[2, 2], logit[2, 1] - corr, logit[2, 1] - corr]), 0) - logit[2, 2],
    ]).mean()
    torch.testing.assert_close(loss(table, u, y), expected)


def test_bpr_and_hinge_on_impressions_by_hand():
    table = _Table(5, 3)
    u, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 4])
    # -1 pads fill with popularity samples (all mass on item 3 here); item 4 in row 1 is the target (skipped).
    imp = torch.tensor([[1, 2, -1], [4, 3, 3]])
    counts = [0, 0, 0, 5, 0]
    w, b = table.output_embeddings()
    s = u @ w.t() + b
    bpr = ((-F.logsigmoid(s[0, 0] - s[0, [1, 2, 3]])).mean() + (-F.logsigmoid(s[1, 4] - s[1, [3, 3]])).mean()) / 2
    torch.testing.assert_close(build_loss("bpr", item_counts=counts)(table, u, y, impressions=imp), bpr)
    un = F.normalize(u, dim=1)
    ls = F.logsigmoid(un @ w.t())
    hinge = (torch.relu(ls[0, [1, 2, 3]] - ls[0, 0] + 0.1).mean() + torch.relu(ls[1, [3, 3]] - ls[1, 4] + 0.1).mean()) / 2
    torch.testing.assert_close(build_loss("hinge", item_counts=counts)(table, u, y, impressions=imp), hinge)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_trains_a_model_and_has_finite_gradients(name):
    model = build_model("moving_average", n_items=8, embedding_dim=6).double()
    u, y = torch.randn(6, 6, dtype=torch.float64, requires_grad=True), torch.randint(0, 8, (6,))
    cfg = {"num_negatives": 3, "item_counts": torch.arange(1, 9)} if name != "softmax" else {}
    value = build_loss(name, **cfg)(model, u, y)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_build_loss_rejects_bad_names_and_keys():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("nce")
    with pytest.raises(TypeError, match="negatives"):
        build_loss("bpr", negatives=3)
    with pytest.raises(ValueError, match="item_counts"):
        build_loss("hinge", item_counts=[-1.0, 2.0])
    with pytest.raises(ValueError, match="impressions"):
        build_loss("bpr")(_Table(3, 2), torch.randn(2, 2, dtype=torch.float64), torch.tensor([0, 1]),
                          impressions=torch.tensor([[0, 1, 2]]))


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("sampled_softmax", {"num_negatives": -1}, "num_negatives must be an int >= 0"),
        ("sampled_softmax", {"num_negatives": 0, "in_batch": False}, "needs negatives"),
        ("sampled_softmax", {"in_batch": True}, "in_batch=True needs item_counts"),
        ("bpr", {"num_negatives": 0}, "num_negatives must be a positive int"),
        ("hinge", {"num_negatives": 0}, "num_negatives must be a positive int"),
    ],
)
def test_losses_reject_bad_options(name, config, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **config)


def test_losses_reject_bad_shapes_and_catalogue_mismatch():
    table, u = _Table(4, 2), torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"user_emb must be \(n, D\) and targets \(n,\)"):
        build_loss()(table, u, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"user_emb must be \(n, D\)"):
        build_loss()(table, u[0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="item_counts has 3 items, model 4"):
        build_loss("sampled_softmax", item_counts=[1, 2, 3])(table, u, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"impressions must be item ids in \[-1, 4\), got min 1 max 4"):
        build_loss("bpr")(table, u, torch.tensor([0, 1, 2]), impressions=torch.tensor([[1], [2], [4]]))
    with pytest.raises(ValueError, match="user_emb has 3 columns but the model's output embeddings 2"):
        build_loss()(table, torch.randn(3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name", ["softmax", "sampled_softmax", "bpr", "hinge"])
@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (torch.tensor([0, -1]), ValueError, r"targets must be item ids in \[0, 4\), got min -1 max 0"),
        (torch.tensor([0, 4]), ValueError, r"targets must be item ids in \[0, 4\), got min 0 max 4"),
        (torch.tensor([0.9, 3.7]), TypeError, "targets must be an integer tensor of item ids, got torch.float32"),
        (torch.tensor([True, False]), TypeError, "targets must be an integer tensor"),
    ],
)
def test_every_loss_checks_its_targets(name, targets, error, match):
    """Not only softmax: an id of -1 would read the last item's row, a float would be truncated."""
    loss = build_loss(name, **({"item_counts": [1, 1, 1, 1]} if LOSSES[name].samples_items else {}))
    with pytest.raises(error, match=match):
        loss(_Table(4, 2), torch.randn(2, 2, dtype=torch.float64), targets)


def test_impressions_must_be_integer_ids():
    with pytest.raises(TypeError, match="impressions must be an integer tensor"):
        build_loss("bpr")(_Table(4, 2), torch.randn(1, 2, dtype=torch.float64), torch.tensor([0]),
                          impressions=torch.tensor([[1.5]]))


@pytest.mark.parametrize("value", [2.5, True, "3"])
def test_negative_counts_must_be_ints(value):
    with pytest.raises(ValueError, match="num_negatives must be a positive int"):
        build_loss("bpr", num_negatives=value)


def test_full_impressions_are_the_negatives_without_sampling():
    table = _Table(5, 3)
    u, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 4])
    imp = torch.tensor([[1, 2], [4, 3]])  # no -1 pad: nothing is sampled; item 4 in row 1 is the target
    s = table.scores(u)
    bpr = ((-F.logsigmoid(s[0, 0] - s[0, [1, 2]])).mean() + (-F.logsigmoid(s[1, 4] - s[1, 3]))) / 2
    rng = torch.random.get_rng_state()
    value = build_loss("bpr", num_negatives=7)(table, u, y, impressions=imp)
    assert torch.equal(torch.random.get_rng_state(), rng)  # no sample was drawn
    torch.testing.assert_close(value, bpr)


def test_sample_items_follows_the_popularity_at_any_catalogue_size():
    gen_state = torch.random.get_rng_state()
    draws = sample_items(torch.tensor([0.0, 0.25, 0.0, 0.75], dtype=torch.float64), 20_000, 4, "cpu")
    counts = torch.bincount(draws, minlength=4)
    assert counts[0] == counts[2] == 0 and abs(counts[3] / 20_000 - 0.75) < 0.02  # zero popularity: never drawn
    torch.random.set_rng_state(gen_state)
    assert torch.equal(sample_items(torch.tensor([0.0, 0.25, 0.0, 0.75], dtype=torch.float64), 20_000, 4, "cpu"),
                       draws)  # fmt: skip: the torch RNG decides, so seeded runs repeat
    # torch.multinomial refuses more than 2**24 categories; a BPR over a larger catalogue samples fine.
    big = 2**24 + 3
    popularity = torch.zeros(big, dtype=torch.float64)
    popularity[[5, big - 1]] = 0.5
    assert set(sample_items(popularity, 200, big, "cpu").tolist()) == {5, big - 1}
    assert sample_items(None, 200, big, "cpu").max() < big


def test_sampled_softmax_with_no_negatives_left_is_zero():
    """One row, in-batch only, no samples: the positive is the whole partition function (was a false error)."""
    table, u = _Table(6, 2), torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    loss = SampledSoftmaxLoss(0, in_batch=True, item_counts=[1] * 6)(table, u, torch.tensor([3]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(u.grad, torch.zeros_like(u))


def test_sampled_softmax_names_a_target_its_counts_never_draw():
    table, u = _Table(6, 2), torch.randn(4, 2, dtype=torch.float64)
    loss = SampledSoftmaxLoss(3, in_batch=True, item_counts=[5, 0, 3, 2, 8, 1])
    with pytest.raises(ValueError, match="gives item 1, a target in this batch, count 0"):
        loss(table, u, torch.tensor([1, 4, 4, 2]))  # it was an infinite loss


def test_impressions_without_columns_mean_sample_every_negative():
    table = _Table(5, 3)
    u, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 4])
    torch.manual_seed(3)
    sampled = build_loss("bpr", num_negatives=4)(table, u, y)
    torch.manual_seed(3)
    no_columns = build_loss("bpr", num_negatives=4)(table, u, y, impressions=torch.zeros(2, 0, dtype=torch.long))
    assert no_columns > 0 and torch.equal(no_columns, sampled)  # it was 0: nothing to compare against
