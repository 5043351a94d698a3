"""Training losses over a model's user embeddings.

Every loss is called as ``loss(model, user_emb, targets, batch=None, impressions=None)``
with the positions to train on already selected: ``user_emb (n, D)``,
``targets (n,)`` item ids; it returns a scalar (mean over positions).
``impressions (n, K)`` are item ids shown but not chosen at each position
(``-1`` pads); losses that need negatives (``takes_impressions``) use them and
fill the pads with sampled negatives, and sample all of them when none are given.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import numpy as np
import torch
import torch.nn.functional as F

from hiertcn_kernels._checks import check_count
from hiertcn_kernels.conv import autocast_state

from .metrics import check_item_ids

LOSS_NAMES = ("softmax", "sampled_softmax", "bpr", "hinge")


def _proposal(item_counts, name: str) -> torch.Tensor | None:
    """Popularity distribution from per-item counts (None: uniform)."""
    if item_counts is None:
        return None
    counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"{name}: item_counts must be a 1-D array of non-negative counts with a positive sum")
    return counts / counts.sum()


def sample_items(popularity: torch.Tensor | None, n: int, n_items: int, device) -> torch.Tensor:
    """``n`` item ids drawn with replacement from ``popularity`` (uniform when None), on ``device``.

    Inverse-CDF sampling (``searchsorted`` on the cumulative popularity): ``torch.multinomial`` refuses
    catalogues of more than 2**24 items. Items of zero popularity are never drawn.
    """
    if popularity is None:
        return torch.randint(n_items, (n,), device=device)
    if popularity.numel() != n_items:
        raise ValueError(f"item_counts has {popularity.numel()} items, model {n_items}")
    cdf = popularity.to(device).cumsum(0)
    draws = torch.rand(n, dtype=cdf.dtype, device=device) * cdf[-1]
    return torch.searchsorted(cdf, draws, right=True).clamp_(max=n_items - 1)


_HOST_CHECKED = threading.local()


@contextlib.contextmanager
def ids_checked_on_host():
    """Inside, the built-in losses skip their check of the item ids, which reads them back from the device
    (a sync per step on a GPU): for a caller that has checked them on the host, as the trainer does with
    the bounds a batch knows from its construction (``SessionBatch.item_bounds``)."""
    before = getattr(_HOST_CHECKED, "on", False)
    _HOST_CHECKED.on = True
    try:
        yield
    finally:
        _HOST_CHECKED.on = before


class _Loss:
    takes_impressions = False  # True: negatives come from impressions when the batch has them
    samples_items = False  # True: draws negatives by ``item_counts`` (popularity), given at construction

    def __call__(self, model, user_emb, targets, batch=None, impressions=None):
        if not isinstance(user_emb, torch.Tensor) or not user_emb.is_floating_point():
            raise TypeError(f"user_emb must be a floating tensor, got {getattr(user_emb, 'dtype', type(user_emb))}")
        weight, _ = model.output_embeddings()
        if not getattr(_HOST_CHECKED, "on", False):
            check_item_ids(weight.shape[0], targets=targets,
                           **({} if impressions is None else {"impressions": impressions}))  # fmt: skip
        if user_emb.dim() != 2 or targets.shape != (user_emb.shape[0],):
            raise ValueError(f"user_emb must be (n, D) and targets (n,), got {tuple(user_emb.shape)} and "
                             f"{tuple(targets.shape)}")  # fmt: skip
        if user_emb.shape[1] != weight.shape[1]:
            raise ValueError(f"user_emb has {user_emb.shape[1]} columns but the model's output embeddings "
                             f"{weight.shape[1]}")  # fmt: skip
        return self.compute(model, user_emb, targets.long(), impressions)


# Rows of logits per chunk: 2**22 floats (16 MiB in fp32) whatever the catalogue size.
_CHUNK_ELEMENTS = 2**22


class _LinearCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(u @ weight.T + bias, targets)`` (mean), computed chunk by chunk of rows.

    The forward also computes the gradients w.r.t. ``u``, ``weight`` and ``bias``
    (``(softmax - onehot) / n`` per chunk, folded through the two products
    at once), so neither pass ever holds the full ``(n, n_items)`` logits and
    the backward only scales the stored gradients by ``grad_output``.
    """

    @staticmethod
    def forward(ctx, user_emb, weight, bias, targets, chunk_rows):
        n = user_emb.shape[0]
        need_u, need_w, need_b = ctx.needs_input_grad[:3]
        grad_u = torch.empty_like(user_emb) if need_u else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        loss = user_emb.new_zeros(())
        for start in range(0, n, chunk_rows):
            u, t = user_emb[start:start + chunk_rows], targets[start:start + chunk_rows]
            rows = torch.arange(t.shape[0], device=t.device)
            logits = torch.addmm(bias, u, weight.t())
            target_logit = logits[rows, t]
            peak = logits.amax(1, keepdim=True)
            # One exp pass gives both the logsumexp and the softmax, in the logits' own memory.
            grad_logits = logits.sub_(peak).exp_()
            total = grad_logits.sum(1, keepdim=True)
            loss += (total.log() + peak).sum() - target_logit.sum()
            grad_logits.mul_(total.reciprocal_().div_(n))  # softmax / n
            grad_logits[rows, t] -= 1.0 / n
            if need_u:
                torch.mm(grad_logits, weight, out=grad_u[start:start + chunk_rows])
            if need_w:
                grad_w.addmm_(grad_logits.t(), u)
            if need_b:
                grad_b += grad_logits.sum(0)
        ctx.save_for_backward(grad_u, grad_w, grad_b)
        return loss / n

    @staticmethod
    def backward(ctx, grad_output):
        return (*(None if g is None else g * grad_output for g in ctx.saved_tensors), None, None)


def linear_cross_entropy(user_emb, weight, bias, targets, chunk_rows: int | None = None, *,
                         check_targets: bool = True):  # fmt: skip
    """Mean softmax cross-entropy of ``user_emb @ weight.T + bias`` against ``targets``, never materialising the logits.

    Same value and gradients as ``F.cross_entropy(torch.addmm(bias, user_emb, weight.t()), targets)``;
    ``chunk_rows`` rows of logits at a time (default: ``2**22 / n_items`` rows). fp16/bf16 inputs are
    computed in fp32 (the loss is fp32), under ``torch.autocast`` too.
    """
    n_items = weight.shape[0]
    if check_targets:  # one host read; a loss checks them once for all its parts (``_Loss``)
        check_item_ids(n_items, targets=targets)
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_ELEMENTS // n_items)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    # Half precision would overflow the softmax's sum past 65,504 items (fp16) and round it coarsely: compute in
    # fp32 (also under torch.autocast, which would cast the products back); gradients return in the inputs' dtypes.
    user_emb, weight, bias = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                              for t in (user_emb, weight, bias))  # fmt: skip
    with torch.autocast(autocast_state(user_emb)[0], enabled=False):
        if user_emb.shape[0] == 0:  # nothing to average: NaN, as F.cross_entropy gives
            return F.cross_entropy(torch.addmm(bias, user_emb, weight.t()), targets)
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in (user_emb, weight, bias))):
            # No gradients wanted (evaluation): the loss alone, still chunked.
            chunks = zip(user_emb.split(chunk_rows), targets.split(chunk_rows))
            total = sum(F.cross_entropy(torch.addmm(bias, u, weight.t()), t, reduction="sum") for u, t in chunks)
            return total / user_emb.shape[0]
        return _LinearCrossEntropy.apply(user_emb, weight, bias, targets, chunk_rows)


class SoftmaxLoss(_Loss):
    """Full softmax cross-entropy over the whole catalogue (the official XING loss), by :func:`linear_cross_entropy`."""

    def __init__(self, chunk_rows: int | None = None):
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.chunk_rows = chunk_rows

    def compute(self, model, user_emb, targets, impressions):
        weight, bias = model.output_embeddings()
        return linear_cross_entropy(user_emb, weight, bias, targets, self.chunk_rows, check_targets=False)


class SampledSoftmaxLoss(_Loss):
    """Softmax over the positive, the batch's other targets and popularity-sampled items, log-Q corrected.

    The partition function is estimated by importance sampling: a negative
    candidate ``j`` is weighted by ``1 / ((m + k) q_j)``, the expected number
    of times it appears among the ``m = n - 1`` other in-batch targets and the
    ``k`` samples, both draws from the popularity ``q`` (``item_counts``: the
    training targets' counts, which the in-batch targets follow). That is the
    log-Q correction: subtract ``log((m + k) q_j)`` from the negative's logit.
    Without in-batch negatives ``item_counts`` may be omitted (uniform samples).
    Candidates equal to a row's own target are masked (accidental hits), so the
    loss converges to full softmax cross-entropy as ``k`` (or the batch) grows.
    Unlike Jean et al. (2015) and TensorFlow's ``sampled_softmax_loss``, the
    positive's own logit is not corrected: it enters the partition function
    exactly, once, and only the sampled remainder is importance-weighted.
    """

    samples_items = True

    def __init__(self, num_negatives: int = 100, in_batch: bool = True, item_counts=None):
        num_negatives = check_count("num_negatives", num_negatives, 0)
        if num_negatives == 0 and not in_batch:
            raise ValueError("sampled_softmax needs negatives: num_negatives > 0 or in_batch=True")
        if in_batch and item_counts is None:
            raise ValueError(
                "sampled_softmax with in_batch=True needs item_counts (the training targets' item counts): the "
                "in-batch negatives follow the item popularity and the log-Q correction must know it"
            )
        self.num_negatives = num_negatives
        self.in_batch = in_batch
        self.popularity = _proposal(item_counts, "sampled_softmax")

    def _dist(self, n_items, device):
        if self.popularity is None:
            return torch.full((n_items,), 1.0 / n_items, dtype=torch.float64, device=device)
        if self.popularity.numel() != n_items:
            raise ValueError(f"sampled_softmax: item_counts has {self.popularity.numel()} items, model {n_items}")
        return self.popularity.to(device)

    def log_expected_counts(self, candidates, n_rows, n_items):
        """``log((m + k) q_j)`` for each candidate item: the log-Q correction."""
        q = self._dist(n_items, candidates.device)[candidates]
        m = (n_rows - 1) if self.in_batch else 0
        return torch.log((m + self.num_negatives) * q)

    def compute(self, model, user_emb, targets, impressions):
        weight, bias = model.output_embeddings()
        n, n_items = targets.shape[0], weight.shape[0]
        parts = [targets] if self.in_batch else []
        if self.num_negatives:
            parts.append(sample_items(self.popularity, self.num_negatives, n_items, targets.device))
        candidates = torch.cat(parts)
        positive = user_emb.mul(weight[targets]).sum(1) + bias[targets]
        if n == 1 and not self.num_negatives:  # the row's own target is its only candidate: no negatives
            return positive.sub(positive).mean()
        logits = user_emb @ weight[candidates].t() + bias[candidates]
        log_counts = self.log_expected_counts(candidates, n, n_items)
        if bool(torch.isinf(log_counts).any()):  # an in-batch target the popularity says is never drawn
            item = int(candidates[torch.isinf(log_counts)][0])
            raise ValueError(f"sampled_softmax: item_counts gives item {item}, a target in this batch, count 0; pass "
                             f"the counts of the training targets (hiertcn.train.train_item_counts)")  # fmt: skip
        logits = logits - log_counts.to(logits.dtype)
        hits = candidates[None, :] == targets[:, None]  # includes each row's own in-batch column
        logits = logits.masked_fill(hits, float("-inf"))
        return (torch.logsumexp(torch.cat([positive[:, None], logits], 1), 1) - positive).mean()


def _negatives(impressions, targets, num_negatives, popularity, n_items):
    """``(n, K)`` negative ids and a validity mask: the impressions, with popularity (or uniform) samples
    in their ``-1`` pads; all samples without impressions. A negative equal to the row's target is invalid."""
    if impressions is not None:
        impressions = impressions.long()
        if impressions.dim() != 2 or impressions.shape[0] != targets.shape[0]:
            raise ValueError(f"impressions must be (n, K) with n={targets.shape[0]}, got {tuple(impressions.shape)}")
    if impressions is not None and impressions.shape[1] == 0:
        impressions = None  # no columns at all: every negative is sampled
    if impressions is not None and not bool((impressions < 0).any()):
        negatives = impressions
    else:
        width = num_negatives if impressions is None else impressions.shape[1]
        negatives = sample_items(popularity, targets.shape[0] * width, n_items, targets.device)
        negatives = negatives.view(targets.shape[0], width)
        if impressions is not None:  # impressions first; a row with fewer fills its -1 pads with samples
            negatives = torch.where(impressions >= 0, impressions, negatives)
    valid = (negatives >= 0) & (negatives != targets[:, None])
    return negatives.clamp(min=0), valid


def _masked_mean(values, valid):
    per_row = (values * valid).sum(1) / valid.sum(1).clamp(min=1)
    rows = valid.any(1)
    return per_row[rows].mean() if bool(rows.any()) else values.sum() * 0


class BPRLoss(_Loss):
    """Bayesian personalised ranking: ``-log sigmoid(s_pos - s_neg)`` averaged over negatives."""

    takes_impressions = True
    samples_items = True

    def __init__(self, num_negatives: int = 1, item_counts=None):
        self.num_negatives = check_count("num_negatives", num_negatives, 1)
        self.popularity = _proposal(item_counts, "bpr")

    def compute(self, model, user_emb, targets, impressions):
        weight, bias = model.output_embeddings()
        negatives, valid = _negatives(impressions, targets, self.num_negatives, self.popularity, weight.shape[0])
        pos = user_emb.mul(weight[targets]).sum(1) + bias[targets]
        neg = torch.einsum("nd,nkd->nk", user_emb, weight[negatives]) + bias[negatives]
        return _masked_mean(-F.logsigmoid(pos[:, None] - neg), valid)


class HingeLoss(_Loss):
    """The paper's Pinterest loss: ``relu(log sigmoid(<u, n>) - log sigmoid(<u, p>) + margin)`` with ``u`` L2-normalised.

    Negatives are the impressions (20 in the paper) or, when a log has none,
    ``num_negatives`` popularity (or uniform) samples. Scores use the output
    embeddings without bias, as the release does.
    """

    takes_impressions = True
    samples_items = True

    def __init__(self, margin: float = 0.1, num_negatives: int = 20, item_counts=None):
        self.margin = margin
        self.num_negatives = check_count("num_negatives", num_negatives, 1)
        self.popularity = _proposal(item_counts, "hinge")

    def compute(self, model, user_emb, targets, impressions):
        weight, _ = model.output_embeddings()
        negatives, valid = _negatives(impressions, targets, self.num_negatives, self.popularity, weight.shape[0])
        u = F.normalize(user_emb, dim=-1)
        pos = F.logsigmoid(u.mul(weight[targets]).sum(1))
        neg = F.logsigmoid(torch.einsum("nd,nkd->nk", u, weight[negatives]))
        return _masked_mean(torch.relu(neg - pos[:, None] + self.margin), valid)


LOSSES = {"softmax": SoftmaxLoss, "sampled_softmax": SampledSoftmaxLoss, "bpr": BPRLoss, "hinge": HingeLoss}


def build_loss(name: str = "softmax", **config):
    """The loss ``name`` (one of LOSS_NAMES) with its keyword options."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
    cls = LOSSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise TypeError(f"{name} loss got unknown config key(s) {unknown}; accepted: {accepted}")
    return cls(**config)
