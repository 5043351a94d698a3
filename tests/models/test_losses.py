import math

import pytest
import torch
import torch.nn.functional as F

from hiertcn.losses import LOSS_NAMES, SampledSoftmaxLoss, build_loss
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


def test_sampled_softmax_in_batch_masks_accidental_hits():
    table = _Table(4, 3)
    u, y = torch.randn(3, 3, dtype=torch.float64), torch.tensor([1, 1, 2])
    loss = build_loss("sampled_softmax", num_negatives=0, in_batch=True)
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
    cfg = {"num_negatives": 3} if name != "softmax" else {}
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
