"""The training loop with small stand-in models, losses and evaluators (no dependency on hiertcn.models)."""

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hiertcn.train as train_module
from hiertcn.batching import QueueBatcher
from hiertcn.checkpoint import load_checkpoint
from hiertcn.config import Config
from hiertcn.data.splits import Dataset
from hiertcn.train import (
    NonFiniteLossError,
    Prefetcher,
    batch_source,
    build_adam,
    fit,
    train_item_counts,
    training_loss,
)
from hiertcn_kernels.packing import SessionCSR

N_ITEMS = 12


class TinyLaneGRU(nn.Module):
    """Carries one state per lane: a GRU cell over session means, reset at new users."""

    carries_state = True
    name = "tiny"

    def __init__(self, n_items=N_ITEMS, dim=8):
        super().__init__()
        self.dim = dim
        self.emb = nn.Embedding(n_items + 1, dim)  # last row: the start token
        self.cell = nn.GRUCell(dim, dim)
        self.head = nn.Linear(dim, n_items)

    def init_state(self, n_lanes, device):
        return torch.zeros(n_lanes, self.dim, device=device)

    def detach_state(self, state):
        return state.detach()

    def forward(self, batch, state):
        cu, lp = batch.cu_seqlens.tolist(), batch.lane_ptr.tolist()
        start = torch.full((1,), self.emb.num_embeddings - 1, device=batch.items.device)
        out, new_state = [], []
        for q in range(batch.n_lanes):
            h = state[q]
            for w in range(lp[q], lp[q + 1]):
                if batch.new_user[w]:
                    h = torch.zeros_like(h)
                items = batch.items[cu[w] : cu[w + 1]]
                shifted = self.emb(torch.cat([start, items[:-1]]))
                out.append(shifted + h)
                h = self.cell(self.emb(items).mean(0, keepdim=True), h[None])[0]
            new_state.append(h)
        return torch.cat(out), torch.stack(new_state)

    def scores(self, user_emb):
        return self.head(user_emb)


def ce_loss(model, user_emb, targets, batch=None):
    return F.cross_entropy(model.scores(user_emb), targets)


def lane_evaluate(model, dataset, roles):
    """MRR of the sessions with a role in ``roles``, with every earlier session as context."""
    role = np.asarray(dataset.role)
    batcher = QueueBatcher(
        dataset.csr, n_queues=4, include=role <= max(roles), targets=np.isin(role, roles), shuffle=False
    )
    state, ranks = model.init_state(4, "cpu"), []
    for batch in batcher.batches(0):
        emb, state = model(batch, state)
        scores = model.scores(emb[batch.target_mask])
        target = batch.items[batch.target_mask]
        ranks.append(1 + (scores >= scores.gather(1, target[:, None])).sum(1) - 1)
    ranks = torch.cat(ranks).float()
    return {"mrr": float((1 / ranks).mean()), "recall@1": float((ranks == 1).float().mean()),
            "n_events": len(ranks), "n_users": len(batcher.users)}  # fmt: skip


def planted_dataset(n_users=24, seed=0):
    """Users repeat a personal cycle of items, so next-item is learnable; last session TEST, one before VALID."""
    rng = np.random.default_rng(seed)
    user_ptr, session_ptr, items, ts, role = [0], [0], [], [], []
    for u in range(n_users):
        cycle = rng.permutation(N_ITEMS)[:4]
        n_sessions = int(rng.integers(3, 6))
        t, k = 0, 0
        for s in range(n_sessions):
            n = int(rng.integers(2, 9))
            items.extend(cycle[(k + np.arange(n)) % 4])
            k += n
            ts.extend(t + np.arange(n))
            t += n + 4000
            session_ptr.append(session_ptr[-1] + n)
            role.append(2 if s == n_sessions - 1 else 1 if s == n_sessions - 2 else 0)
        user_ptr.append(user_ptr[-1] + n_sessions)
    csr = SessionCSR(
        user_ptr=np.array(user_ptr), session_ptr=np.array(session_ptr), item=np.array(items, dtype=np.int64),
        timestamp=np.array(ts, dtype=np.int64), user_ids=np.arange(n_users), item_ids=np.arange(N_ITEMS),
    )  # fmt: skip
    return Dataset(csr=csr, role=np.array(role, dtype=np.int8))


def small_config(**kw):
    return Config(**{"epochs": 3, "lr": 0.05, "n_queues": 3, "sessions_per_lane": 2, "max_session_len": 4,
                     "patience": 0, **kw})  # fmt: skip


def run_fit(tmp_path, name="run", config=None, **kw):
    torch.manual_seed(0)
    model = TinyLaneGRU()
    result = fit(
        model, planted_dataset(), config or small_config(), run_dir=tmp_path / name, progress=False,
        loss_fn=ce_loss, evaluate_fn=lane_evaluate, **kw,
    )  # fmt: skip
    return model, result


def test_fit_learns_and_writes_run_files(tmp_path):
    _, result = run_fit(tmp_path)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < 0.85 * losses[0]  # (2.59 -> 2.10)
    assert result.metrics["mrr"] > 0.4  # a random ranking of 12 items scores about 0.26
    assert 0 <= result.metrics["wait_fraction"] < 1 and result.metrics["interactions_per_s"] > 0
    for name in ("last.pt", "best.pt", "metrics.json", "history.json"):
        assert (tmp_path / "run" / name).is_file()
    assert "val_mrr" in result.history[0]


def test_a_fresh_run_leaves_nothing_of_the_run_it_replaces(tmp_path):
    """Killed before its first checkpoint, a new run in the same folder must not leave the old best.pt to
    evaluate, nor the old last.pt to --resume."""
    run_fit(tmp_path)

    def killed(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path, on_step=killed)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.suffix in (".pt", ".json")] == []


def test_lanes_carry_their_state_and_queues_across_epochs(tmp_path, monkeypatch):
    """The release's endless queue stream: every training batch has full lanes, and the state is set up once
    per run, not at each epoch (an epoch opens with the windows the one before left queued)."""
    config = small_config()
    source = batch_source(TinyLaneGRU(), planted_dataset(), config)
    assert all(len(lane) == config.sessions_per_lane for epoch in range(3) for b in source.plan(epoch) for lane in b)
    assert any(source.carried_in(epoch) != [[]] * config.n_queues for epoch in (1, 2))
    lanes = []
    monkeypatch.setattr(TinyLaneGRU, "init_state", lambda self, n, device: lanes.append(n) or torch.zeros(n, self.dim))
    run_fit(tmp_path, config=config)
    assert lanes.count(config.n_queues) == 1  # (lane_evaluate sets up 4 lanes of its own)


def test_resume_refuses_a_queue_run_started_before_lanes_ran_on_across_epochs(tmp_path):
    config = small_config(epochs=1)
    run_fit(tmp_path, config=config)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    del ckpt["run"]["carry_over"]  # as written before 2026-12-01: each epoch drained its queues
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match="cannot be resumed exactly"):
        run_fit(tmp_path, config=small_config(epochs=2), resume=True)


def test_lr_decays_once_per_epoch(tmp_path):
    run_fit(tmp_path, config=small_config(lr_decay=0.5))
    optimizer = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]
    assert [g["lr"] for g in optimizer["param_groups"]] == [pytest.approx(0.05 * 0.5**3)]


def _epoch_batches(config) -> list[int]:
    source = batch_source(TinyLaneGRU(), planted_dataset(), config)
    return [source.n_batches(epoch) for epoch in range(config.epochs)]


@pytest.mark.parametrize("where", ["mid-epoch", "first step of an epoch"])
def test_interrupted_run_resumes_to_identical_result(tmp_path, where):
    """Mid-epoch from a mid-epoch checkpoint; at an epoch's first step from the checkpoint of the epoch before,
    whose lane state the next epoch carries on from."""
    config = small_config(checkpoint_every=3 if where == "mid-epoch" else 0)  # 0: at epoch ends only
    whole_model, whole = run_fit(tmp_path, "whole", config)
    saved = 6 if where == "mid-epoch" else _epoch_batches(config)[0]

    def kill(step):
        if step == saved + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path, "split", config, on_step=kill)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["run"]["step"] == saved
    resumed_model, resumed = run_fit(tmp_path, "split", config, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert resumed.metrics["mrr"] == whole.metrics["mrr"] and resumed.curve == whole.curve
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _fused_adam_read_a_step_late(monkeypatch):
    """The reports of one CUDA process with fused Adam, on the CPU: fused Adam (its ``found_inf`` skip) and
    each step's numbers read after the next step ran."""
    monkeypatch.setattr(train_module, "build_adam", lambda params, lr, weight_decay=0.0: torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay, fused=True))  # fmt: skip
    monkeypatch.setattr(train_module, "_defers_step_reports", lambda optimizer, device, world: True)


POISONS = [
    (lambda loss, user_emb: loss * float("nan"), "loss is nan"),
    # A finite loss whose gradient is NaN: d/dx sqrt(x) at 0 is inf, times the 0 it is multiplied by.
    (lambda loss, user_emb: loss + 0 * torch.sqrt(user_emb.sum() * 0), "gradient norm is nan"),
]


def _poisoned_at_fifth(poison, calls):
    def loss_fn(model, user_emb, targets, batch=None):
        calls.append(1)
        loss = ce_loss(model, user_emb, targets)
        return poison(loss, user_emb) if len(calls) == 5 else loss

    return loss_fn


@pytest.mark.parametrize("deferred", [False, True], ids=["read-at-once", "read-a-step-late"])
@pytest.mark.parametrize("poison, match", POISONS, ids=["loss", "gradient"])
def test_non_finite_loss_or_gradients_stop_before_the_step_with_the_last_good_checkpoint(
    tmp_path, monkeypatch, poison, match, deferred
):
    if deferred:
        _fused_adam_read_a_step_late(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=f"{match} at epoch 1, batch 5.*last good checkpoint"):
        fit(TinyLaneGRU(), planted_dataset(), small_config(checkpoint_every=1), run_dir=tmp_path, progress=False,
            loss_fn=_poisoned_at_fifth(poison, []), evaluate_fn=lane_evaluate)  # fmt: skip
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["run"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("poison, match", POISONS, ids=["loss", "gradient"])
def test_a_non_finite_step_read_a_step_late_never_lands_in_the_weights(tmp_path, monkeypatch, poison, match, device):
    if device == "cpu":
        _fused_adam_read_a_step_late(monkeypatch)  # on CUDA, the default: a pinned copy read after an event
    calls, model = [], TinyLaneGRU()
    seen = []  # every parameter after each step
    with pytest.raises(NonFiniteLossError, match=f"{match} at epoch 1, batch 5 "):
        fit(model, planted_dataset(), small_config(device=device), run_dir=tmp_path, progress=False,
            loss_fn=_poisoned_at_fifth(poison, calls), evaluate_fn=lane_evaluate,
            on_step=lambda step: seen.append([p.detach().clone() for p in model.parameters()]))  # fmt: skip
    assert len(calls) == 6  # raised after the sixth step ran: its numbers were read a step late
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Adam skipped the fifth step: its weights are the fourth's, and the sixth step trained on.
    assert all(torch.equal(a, b) for a, b in zip(seen[3], seen[4], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seen[4], model.parameters(), strict=True))


def test_reading_the_step_reports_a_step_late_changes_no_result(tmp_path, monkeypatch):
    config = small_config(checkpoint_every=4)  # checkpoints mid-epoch read the step in flight first
    monkeypatch.setattr(train_module, "build_adam", lambda params, lr, weight_decay=0.0: torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay, fused=True))  # fmt: skip
    at_once_model, at_once = run_fit(tmp_path, "at-once", config)
    _fused_adam_read_a_step_late(monkeypatch)
    late_model, late = run_fit(tmp_path, "late", config)
    def untimed(row):
        return {k: v for k, v in row.items() if not ("time" in k or k.endswith("_s") or k.startswith("wait"))}

    assert [untimed(r) for r in late.history] == [untimed(r) for r in at_once.history]
    assert late.curve == at_once.curve and untimed(late.metrics) == untimed(at_once.metrics)
    for a, b in zip(at_once_model.state_dict().values(), late_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    runs = [load_checkpoint(tmp_path / name / "last.pt")["run"] for name in ("at-once", "late")]
    assert [[r[k] for k in ("step", "tokens", "curve", "epoch_loss", "epoch_targets")] for r in runs] == 2 * [
        [runs[0][k] for k in ("step", "tokens", "curve", "epoch_loss", "epoch_targets")]
    ]



@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_bf16_trains_under_autocast_and_evaluates_without(tmp_path, precision):
    seen = {"train": set(), "evaluate": set()}

    class Spy(TinyLaneGRU):
        def forward(self, batch, state):
            enabled = torch.is_autocast_enabled("cpu")
            seen["train" if self.training else "evaluate"].add(enabled and torch.get_autocast_dtype("cpu"))
            return super().forward(batch, state)

    torch.manual_seed(0)
    result = fit(Spy(), planted_dataset(), small_config(epochs=2, precision=precision), run_dir=tmp_path,
                 progress=False, loss_fn=ce_loss, evaluate_fn=lane_evaluate)  # fmt: skip
    assert seen == {"train": {torch.bfloat16 if precision == "bf16" else False}, "evaluate": {False}}
    losses = [row["train_loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert load_checkpoint(tmp_path / "best.pt")["config"]["precision"] == precision

def test_resume_refuses_a_log_that_changed_since_the_run_started(tmp_path):
    config = small_config(epochs=1)
    run_fit(tmp_path, "run", config)
    other = planted_dataset(seed=1)  # same catalogue, other interactions
    with pytest.raises(ValueError, match="prepared log differs"):
        fit(TinyLaneGRU(), other, config, run_dir=tmp_path / "run", resume=True, progress=False, loss_fn=ce_loss,
            evaluate_fn=lane_evaluate)  # fmt: skip
    data = planted_dataset()
    renamed = Dataset(csr=dataclasses.replace(data.csr, item_ids=data.csr.item_ids + 100), role=data.role)
    with pytest.raises(ValueError, match="catalogue of 12 items"):
        fit(TinyLaneGRU(), renamed, config, run_dir=tmp_path / "run", resume=True, progress=False, loss_fn=ce_loss,
            evaluate_fn=lane_evaluate)  # fmt: skip


def test_checkpoint_writes_do_not_count_as_training_time(tmp_path, monkeypatch):
    import hiertcn.train as train_module

    real_save = train_module.save_checkpoint

    def slow_save(*args, **kw):
        time.sleep(0.5)
        return real_save(*args, **kw)

    monkeypatch.setattr(train_module, "save_checkpoint", slow_save)
    _, result = run_fit(tmp_path, config=small_config(epochs=1, checkpoint_every=1, validate=False))
    assert result.metrics["steps"] >= 5 and result.metrics["train_time_s"] < 0.5 * (result.metrics["steps"] - 1)


def test_early_stopping_on_validation_mrr(tmp_path):
    scores = iter([0.5, 0.6, 0.55, 0.52, 0.7, 0.8])

    def evaluate(model, dataset, roles):
        return {"mrr": next(scores) if roles == (1,) else 0.1}

    result = fit(TinyLaneGRU(), planted_dataset(), small_config(epochs=6, patience=2), run_dir=tmp_path,
                 progress=False, loss_fn=ce_loss, evaluate_fn=evaluate)  # fmt: skip
    assert [r["val_mrr"] for r in result.history] == [0.5, 0.6, 0.55, 0.52]
    assert result.metrics["epochs"] == 4


def test_max_time_stops_training(tmp_path):
    _, result = run_fit(tmp_path, config=small_config(epochs=50, max_time=1e-6))
    assert result.metrics["steps"] == 1 and len(result.history) == 1
    assert result.stopped == "max_time" and result.history[0]["partial"] and 0 < result.history[0]["epoch"] < 1
    assert "val_mrr" in result.history[0]  # the cut epoch's weights are still a candidate for best.pt


def test_a_max_time_stop_mid_epoch_resumes_the_rest_of_that_epoch(tmp_path):
    """Out of time after one step: no lr decay and no new epoch; --resume trains the epoch's other batches."""
    config = small_config(lr_decay=0.5)
    _, whole = run_fit(tmp_path, "whole", config)
    run_fit(tmp_path, "cut", small_config(lr_decay=0.5, max_time=1e-6))
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (saved["run"]["epoch"], saved["run"]["batch"], saved["run"]["bad_epochs"]) == (0, 1, 0)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)
    _, resumed = run_fit(tmp_path, "cut", config, resume=True)
    assert [step for step, _ in resumed.curve] == [step for step, _ in whole.curve]
    full_epochs = [r for r in resumed.history if not r.get("partial")]
    assert [r["train_loss"] for r in full_epochs] == pytest.approx([r["train_loss"] for r in whole.history])
    assert resumed.metrics["steps"] == whole.metrics["steps"]


def test_prefetcher_yields_in_order_and_reraises_loader_errors():
    def items():
        yield from range(5)
        raise OSError("disk gone")

    loader = Prefetcher(items(), depth=2)
    got = []
    with pytest.raises(OSError, match="disk gone"):
        got.extend(loader)
    assert got == list(range(5))
    assert loader.wait_s >= 0


def test_whole_user_batches_cover_train_sessions_once_per_epoch():
    from hiertcn.train import WholeUserBatches

    data = planted_dataset(n_users=10)
    train = data.role == 0
    source = WholeUserBatches(data.csr, include=train, batch_users=3, max_session_len=4, seed=1)
    batches = list(source.batches(0))
    assert len(batches) == source.n_batches(0) == 4
    assert sum(int(b.target_mask.sum()) for b in batches) == int(np.diff(data.csr.session_ptr)[train].sum())
    lanes = torch.cat([b.lane_user for b in batches])
    assert sorted(lanes.tolist()) == list(range(10))
    assert lanes.tolist() != torch.cat([b.lane_user for b in source.batches(1)]).tolist()
    resumed = list(source.batches(0, start=2))
    assert [b.lane_user.tolist() for b in resumed] == [b.lane_user.tolist() for b in batches[2:]]


def test_whole_user_batches_skip_users_left_without_sessions():
    from hiertcn.data.splits import split_by_time
    from hiertcn.train import WholeUserBatches
    from hiertcn_kernels import pack_sessions

    # User 1 only appears after the cutoff, on an item never trained on: the split empties their row.
    csr = pack_sessions(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 0, 2, 3]), np.array([0, 10, 20, 5000, 5010]))
    data = split_by_time(csr, cutoff=1000)
    assert data.csr.user_ptr.tolist() == [0, 1, 1]
    source = WholeUserBatches(data.csr, include=data.role == 0, batch_users=4, max_session_len=20)
    assert source.users.tolist() == [0] and [b.lane_user.tolist() for b in source.batches(0)] == [[0]]


@pytest.mark.parametrize("name", ["sampled_softmax", "bpr", "hinge", "softmax"])
def test_training_loss_samples_by_the_train_popularity(name):
    data = planted_dataset()
    csr, role = data.csr, np.asarray(data.role)
    counts = train_item_counts(data)
    train_items = [csr.item[a:b] for s, (a, b) in enumerate(zip(csr.session_ptr[:-1], csr.session_ptr[1:])) if role[s] == 0]
    assert counts.tolist() == np.bincount(np.concatenate(train_items), minlength=csr.n_items).tolist()
    loss = training_loss(name, data)
    if name == "softmax":
        assert not hasattr(loss, "popularity")
    else:
        torch.testing.assert_close(loss.popularity, torch.as_tensor(counts / counts.sum()))


def test_a_model_fit_without_its_build_model_name_is_named_not_rebuilt(tmp_path):
    from hiertcn.checkpoint import CheckpointError, load_model

    run_fit(tmp_path, config=small_config(epochs=1))
    with pytest.raises(CheckpointError, match="holds a TinyLaneGRU trained by fit\\(\\) without model_name"):
        load_model(tmp_path / "run" / "best.pt")



@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_build_adam_is_fused_on_cuda_and_steps_as_torch_adam(device):
    """Fused Adam (a few launches for every parameter) exactly where every parameter is on CUDA, and
    the same update as torch's default Adam."""
    torch.manual_seed(0)
    params = [torch.randn(5, 3, device=device, requires_grad=True), torch.randn(7, device=device, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fused, plain = build_adam(params, lr=1e-2, weight_decay=1e-3), torch.optim.Adam(twins, lr=1e-2, weight_decay=1e-3)
    assert fused.defaults["fused"] is (True if device == "cuda" else None)
    for _ in range(3):
        for group in (params, twins):
            for p in group:
                p.grad = torch.sin(p.detach() * 3)  # the same gradient of the same weights
        fused.step()
        plain.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resumed_adam_keeps_its_fused_choice(device):
    """An optimizer state saved unfused (an older run, or one on CPU) resumes fused on CUDA, and
    steps there (fused Adam keeps its step counts on the device)."""
    from hiertcn.train import load_adam_state

    param = torch.randn(4, 3, device=device, requires_grad=True)
    saved = torch.optim.Adam([param.detach().cpu().clone().requires_grad_()], lr=1e-2)
    saved.param_groups[0]["params"][0].grad = torch.ones(4, 3)
    saved.step()
    optimizer = build_adam([param], lr=1e-2)
    load_adam_state(optimizer, saved.state_dict())
    assert optimizer.param_groups[0]["fused"] is (True if device == "cuda" else None)
    assert int(optimizer.state[param]["step"]) == 1
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert int(optimizer.state[param]["step"]) == 2
