"""Training losses over a model's user embeddings.

Every loss is called as ``loss(model, user_emb, targets, batch=None, impressions=None)``
with the positions to train on already selected: ``user_emb (n, D)``,
``targets (n,)`` item ids; it returns a scalar (mean over positions).
``impressions (n, K)`` are item ids shown but not chosen at each position
(``-1`` pads); losses that need negatives (``takes_impressions``) use them and
fill the pads with sampled negatives, and sample all of them when none are given.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

LOSS_NAMES = ("softmax", "sampled_softmax", "bpr", "hinge")


def _proposal(item_counts, name: str) -> torch.Tensor | None:
    """Popularity distribution from per-item counts (None: uniform)."""
    if item_counts is None:
        return None
    counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"{name}: item_counts must be a 1-D array of non-negative counts with a positive sum")
    return counts / counts.sum()


class _Loss:
    takes_impressions = False  # True: negatives come from impressions when the batch has them
    def __call__(self, model, user_emb, targets, batch=None, impressions=None):
        if user_emb.dim() != 2 or targets.shape != (user_emb.shape[0],):
            raise ValueError(
                f"user_emb must be (n, D) and targets (n,), got {tuple(user_emb.shape)} and {tuple(targets.shape)}"
            )
        return self.compute(model, user_emb, targets.long(), impressions)


class SoftmaxLoss(_Loss):
    """Full softmax cross-entropy over the whole catalogue (the official XING loss)."""

    def compute(self, model, user_emb, targets, impressions):
        return F.cross_entropy(model.scores(user_emb), targets)


class SampledSoftmaxLoss(_Loss):
    """Softmax over the positive, the batch's other targets and popularity-sampled items, log-Q corrected.

    The partition function is estimated by importance sampling: a negative
    candidate ``j`` is weighted by ``1 / ((m + k) q_j)``, the expected number
    of times it appears among the ``m = n - 1`` other in-batch targets and the
    ``k`` samples, both taken as draws from the popularity ``q`` (from
    ``item_counts``; uniform without them). That is the log-Q correction:
    subtract ``log((m + k) q_j)`` from the negative's logit. Candidates equal to a row's own target are masked (accidental hits),
    so the loss converges to full softmax cross-entropy as ``k`` grows.
    """

    def __init__(self, num_negatives: int = 100, in_batch: bool = True, item_counts=None):
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        if num_negatives == 0 and not in_batch:
            raise ValueError("sampled_softmax needs negatives: num_negatives > 0 or in_batch=True")
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
            q = self._dist(n_items, targets.device)
            parts.append(torch.multinomial(q.float(), self.num_negatives, replacement=True))
        candidates = torch.cat(parts)
        logits = user_emb @ weight[candidates].t() + bias[candidates]
        logits = logits - self.log_expected_counts(candidates, n, n_items).to(logits.dtype)
        positive = user_emb.mul(weight[targets]).sum(1) + bias[targets]
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
        if impressions.numel() and int(impressions.max()) >= n_items:
            raise ValueError(f"impressions hold item ids >= n_items={n_items}")
    if impressions is not None and not bool((impressions < 0).any()):
        negatives = impressions
    else:
        width = num_negatives if impressions is None else impressions.shape[1]
        dist = torch.full((n_items,), 1.0 / n_items) if popularity is None else popularity.float()
        negatives = torch.multinomial(dist, targets.shape[0] * width, replacement=True)
        negatives = negatives.view(targets.shape[0], width).to(targets.device)
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

    def __init__(self, num_negatives: int = 1, item_counts=None):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives
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

    def __init__(self, margin: float = 0.1, num_negatives: int = 20, item_counts=None):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.margin = margin
        self.num_negatives = num_negatives
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
