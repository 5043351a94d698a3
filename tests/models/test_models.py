import dataclasses

import numpy as np
import pytest
import torch
from tinylogs import TINY, make_csr

from hiertcn.batching import SessionBatch, user_batches
from hiertcn.models import MODEL_NAMES, HierTCN, build_model


def _model(name, n_items=9, **extra):
    torch.manual_seed(0)
    return build_model(name, n_items=n_items, **{**TINY[name], **extra}).double().eval()


def _with_items(batch, items):
    return dataclasses.replace(batch, items=items)


def test_user_batches_layout(small_csr):
    (b,) = list(user_batches(small_csr, max_session_len=10))
    # user 0: sessions 3, 25 (-> 10, 10, 5), 2; user 1: 1; user 2: 4, 2, 5, 7.
    assert b.cu_seqlens.diff().tolist() == [3, 10, 10, 5, 2, 1, 4, 2, 5, 7]
    assert b.lane_ptr.tolist() == [0, 5, 6, 10]
    assert b.new_user.tolist() == [True, False, False, False, False, True, True, False, False, False]
    ts = small_csr.timestamp
    # as in training (QueueBatcher): the time since the interaction before each window, 0 where the user starts
    assert b.gap[1].item() == ts[3] - ts[2] and b.gap[2].item() == ts[13] - ts[12]
    assert b.gap[4].item() == ts[28] - ts[27] and b.gap[[0, 5, 6]].tolist() == [0, 0, 0]
    assert b.gap[7].item() == ts[35] - ts[34]
    assert torch.equal(b.items, torch.from_numpy(small_csr.item))
    assert b.lane_user.tolist() == [0, 1, 2]


def test_user_batches_with_empty_sessions_and_users():
    # user 0 starts with an empty session, user 1 has none, user 2's middle session is empty
    csr = make_csr([[0, 3], [0], [2, 0, 2]], n_items=9)
    (b,) = list(user_batches(csr))
    assert b.cu_seqlens.diff().tolist() == [3, 2, 2]
    assert b.lane_ptr.tolist() == [0, 1, 1, 3]  # user 1's lane is empty
    assert b.new_user.tolist() == [True, True, False]
    ts = csr.timestamp
    assert b.gap.tolist() == [0, 0, ts[5] - ts[4]]


def test_user_batches_scores_and_truncates(small_csr):
    score = np.zeros(small_csr.n_sessions, dtype=bool)
    score[[1, 5]] = True  # user 0's second session, user 2's second session
    batches = list(user_batches(small_csr, score_sessions=score, batch_users=1))
    assert [b.lane_user.tolist() for b in batches] == [[0], [2]]  # user 1 has nothing to score
    b0, b2 = batches
    assert b0.n_tokens == 28 and b0.target_mask.tolist() == [False] * 3 + [True] * 25
    assert b2.n_tokens == 6 and b2.target_mask.tolist() == [False] * 4 + [True] * 2
    with pytest.raises(ValueError, match="score_sessions"):
        next(user_batches(small_csr, score_sessions=np.ones(3, dtype=bool)))


def test_user_batches_token_budget(small_csr):
    batches = list(user_batches(small_csr, max_tokens=20))
    assert [b.lane_user.tolist() for b in batches] == [[0], [1, 2]]
    # numpy integers (a config read from an array) work like ints; bools and floats do not
    numpy_args = list(user_batches(small_csr, max_session_len=np.int64(5), batch_users=np.int32(2)))
    assert [b.lane_user.tolist() for b in numpy_args] == [[0, 1], [2]]
    for bad in ({"max_session_len": 2.0}, {"batch_users": True}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive int"):
            next(user_batches(small_csr, **bad))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_causal_within_and_across_sessions(name, small_csr):
    model = _model(name)
    (batch,) = list(user_batches(small_csr, max_session_len=10))
    base, _ = model(batch)
    gen = torch.Generator().manual_seed(1)
    # Cut points: inside a window, at a window boundary, inside a later session, and in another lane.
    for t in (1, 3, 12, 26, 29, 35):
        lane_end = int(batch.cu_seqlens[batch.lane_ptr[1:]].gt(t).long().argmax())
        end = int(batch.cu_seqlens[batch.lane_ptr[lane_end + 1]])
        items = batch.items.clone()
        items[t + 1:end] = torch.randint(0, 9, (end - t - 1,), generator=gen)
        assert not torch.equal(items, batch.items) or end == t + 1
        out, _ = model(_with_items(batch, items))
        torch.testing.assert_close(out[: t + 1], base[: t + 1], rtol=1e-9, atol=1e-10)
        # Other lanes are untouched by a change in this one.
        torch.testing.assert_close(out[end:], base[end:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_new_user_resets_history_in_a_lane(name, small_csr):
    """Two users in one lane (the queue layout): the second user's outputs ignore the first user."""
    model = _model(name)
    (b,) = list(user_batches(small_csr, users=[1, 2]))
    one_lane = dataclasses.replace(b, lane_ptr=torch.tensor([0, b.n_sessions]), lane_user=torch.tensor([2]))
    base, _ = model(one_lane)
    items = one_lane.items.clone()
    items[0] = (items[0] + 1) % 9  # user 1's only interaction
    out, _ = model(_with_items(one_lane, items))
    torch.testing.assert_close(out[1:], base[1:], rtol=1e-9, atol=1e-10)
    # ... and matches the second user alone in a fresh lane.
    (alone,) = list(user_batches(small_csr, users=[2]))
    torch.testing.assert_close(model(alone)[0], base[1:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["hiertcn", "hrnn"])
def test_carried_state_equals_one_long_batch(name, small_csr):
    """Splitting a user's windows over two batches and carrying the state gives the same outputs."""
    model = _model(name)
    (whole,) = list(user_batches(small_csr, users=[2]))
    base, _ = model(whole)
    cu = whole.cu_seqlens
    first = SessionBatch(
        items=whole.items[: cu[2]], cu_seqlens=cu[:3], lane_ptr=torch.tensor([0, 2]),
        new_user=whole.new_user[:2], gap=whole.gap[:2], target_mask=whole.target_mask[: cu[2]],
        lane_user=whole.lane_user,
    )
    second = SessionBatch(
        items=whole.items[cu[2]:], cu_seqlens=cu[2:] - cu[2], lane_ptr=torch.tensor([0, 2]),
        new_user=whole.new_user[2:], gap=whole.gap[2:], target_mask=whole.target_mask[cu[2]:],
        lane_user=whole.lane_user,
    )
    out1, state = model(first, model.init_state(1).double())
    out2, _ = model(second, model.detach_state(state))
    torch.testing.assert_close(torch.cat([out1, out2]), base, rtol=1e-9, atol=1e-10)


def test_hiertcn_first_window_sees_zero_state_and_start_token(small_csr):
    """At a user's very first position the model input is all zeros (zero start token, zero GRU state)."""
    model = _model("hiertcn")
    (b,) = list(user_batches(small_csr))
    out, _ = model(b)
    zero_input = model.tcn(torch.zeros(1, model.project.out_features, dtype=torch.float64),
                           cu_seqlens=torch.tensor([0, 1]))
    for lane_start in b.cu_seqlens[b.lane_ptr[:-1]].tolist():
        torch.testing.assert_close(out[lane_start], zero_input[0])


@pytest.mark.parametrize("agg_dense", ["shared", "separate"])
def test_hiertcn_agg_feeds_the_gru_the_mean_embedding(agg_dense, small_csr):
    """The release's AGG (``shared``) is the window's mean item embedding plus a bias; ``separate`` adds a dense layer."""
    from hiertcn_kernels import segment_reduce

    model = _model("hiertcn", agg_dense=agg_dense)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-zero bias
    (b,) = list(user_batches(small_csr))
    seen, session_context = [], model.session_context
    model.session_context = lambda batch, summaries, state: seen.append(summaries) or session_context(
        batch, summaries, state)
    model(b)
    mean = segment_reduce(model.item_emb(b.items), b.cu_seqlens, "mean")
    expect = model.agg_dense(mean) if agg_dense == "separate" else mean + model.agg_bias
    (fed,) = seen  # the GRU's input, one row per window
    torch.testing.assert_close(fed, expect)
    assert not hasattr(model, "agg_bias" if agg_dense == "separate" else "agg_dense")


def test_old_hiertcn_checkpoints_load_with_their_own_agg(tmp_path):
    """Saved before ``agg_dense`` existed (no option, a dense AGG's weights): rebuilt with ``agg_dense="separate"``."""
    from hiertcn.checkpoint import load_model, save_checkpoint

    old = build_model("hiertcn", n_items=9, agg_dense="separate", **TINY["hiertcn"])
    save_checkpoint(tmp_path / "old.pt", {"model_name": "hiertcn", "n_items": 9, "model_config": dict(TINY["hiertcn"]),
                                          "model": old.state_dict()})
    model, _ = load_model(tmp_path / "old.pt")
    assert torch.equal(model.agg_dense.weight, old.agg_dense.weight)
    with pytest.raises(ValueError, match="agg_dense must be 'shared' or 'separate'"):
        build_model("hiertcn", n_items=9, agg_dense="dense")


@pytest.mark.parametrize("gap_decay", ["fixed", "learned"])
def test_hiertcn_gap_decay_changes_only_later_sessions(gap_decay, small_csr):
    model = _model("hiertcn", gap_decay=gap_decay, gap_bandwidth=1000.0)
    (b,) = list(user_batches(small_csr, users=[2]))
    base, _ = model(b)
    longer = dataclasses.replace(b, gap=b.gap * 5)
    out, _ = model(longer)
    first_len = int(b.cu_seqlens[1])
    torch.testing.assert_close(out[:first_len], base[:first_len])
    assert not torch.allclose(out[first_len:], base[first_len:])


@pytest.mark.parametrize("options", [{"agg": "max"}, {"agg": "sum"}, {"block": "gated"}, {"tied": True}])
def test_hiertcn_options_build_and_run(options, small_csr):
    extra = {"channels": 16} if options.get("tied") else {}
    model = _model("hiertcn", **options, **extra)
    (b,) = list(user_batches(small_csr))
    out, _ = model(b)
    assert out.shape == (b.n_tokens, 16) and torch.isfinite(model.scores(out)).all()
    if options.get("tied"):
        assert model.output_embeddings()[0] is model.item_emb.weight


@pytest.mark.parametrize("name", ["hiertcn", "flat_tcn"])
def test_recompute_gives_the_same_outputs_and_gradients(name, small_csr):
    (batch,) = list(user_batches(small_csr, max_session_len=10))
    models = [_model(name), _model(name, recompute=True)]
    results = []
    for model in models:
        out, _ = model(batch)
        results.append((out, torch.autograd.grad(model.scores(out).logsumexp(1).sum(), list(model.parameters()))))
    (out, grads), (out_r, grads_r) = results
    assert torch.equal(out, out_r)
    for g, g_r in zip(grads, grads_r):
        torch.testing.assert_close(g_r, g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_overfits_a_tiny_log(name):
    # Every user repeats one fixed item cycle, so the next item is determined by the previous one.
    n_items = 6
    cycle = np.array([0, 3, 1, 4, 2, 5])
    csr = make_csr([[6, 6], [6, 6, 6], [6]], n_items, items=np.tile(cycle, 6))
    torch.manual_seed(0)
    model = build_model(name, n_items=n_items, **TINY[name])
    (batch,) = list(user_batches(csr))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        out, _ = model(batch)
        loss = torch.nn.functional.cross_entropy(model.scores(out), batch.items)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.scores(model(batch)[0]).argmax(1)
    # All but each user's very first item (unpredictable) are learned.
    starts = batch.cu_seqlens[batch.lane_ptr[:-1]]
    later = torch.ones(batch.n_tokens, dtype=torch.bool)
    later[starts] = False
    accuracy = (pred[later] == batch.items[later]).double().mean().item()
    assert accuracy > 0.95, f"{name}: accuracy {accuracy:.2f}, final loss {loss.item():.3f}"


def test_build_model_rejects_bad_names_and_keys():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("sasrec", n_items=5)
    with pytest.raises(TypeError, match="levelz"):
        build_model("hiertcn", n_items=5, levelz=3)
    for bad in (0, 5.0, True, "5"):
        with pytest.raises(ValueError, match="n_items must be a positive int"):
            build_model("gru4rec", n_items=bad)
    # csr.n_items may come as a numpy integer: it is a count like any other.
    model = build_model("gru4rec", n_items=np.int64(5))
    assert model.n_items == 5 and type(model.n_items) is int
    # Config-file values of the wrong kind are named (they failed as shape errors inside torch).
    for model, key, value, wanted in (("hiertcn", "embedding_dim", -4, "a positive int"),
                                      ("hiertcn", "levels", "3", "a positive int"),
                                      ("gru4rec", "dropout", 1.0, "in \\[0, 1\\)"),
                                      ("hrnn", "tied", "yes", "true or false"),
                                      ("flat_tcn", "channels", [64, 0], "a non-empty list of positive ints"),
                                      ("hiertcn", "gap_bandwidth", "week", "a number"),
                                      ("hiertcn", "block", 1, "a string")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{model} option {key} must be {wanted}, got"):
            build_model(model, n_items=5, **{key: value})
    assert build_model("flat_tcn", n_items=5, channels=[8, 8], dropout=0).levels[-1][1].dropout == 0
    with pytest.raises(ValueError, match="state"):
        HierTCN(5, embedding_dim=8, hidden_dim=4, channels=8, levels=1)(
            next(user_batches(make_csr([[2]], 5))), torch.zeros(2, 3, 4)
        )


def test_tcn_models_give_their_dropout_to_every_block():
    hier = build_model("hiertcn", n_items=10, dropout=0.3)
    flat = build_model("flat_tcn", n_items=10, dropout=0.3, channels=(8, 16))
    blocks = [*hier.tcn.blocks, *(block for _, block in flat.levels)]
    assert len(blocks) == 4 and all(block.dropout == 0.3 for block in blocks)
    assert build_model("hiertcn", n_items=10, output_dropout=0.2).tcn.output_dropout.p == 0.2


def _insert_empty_windows(batch, where):
    """``batch`` with a zero-length window inserted before window ``j`` of lane ``lane`` for each ``(lane, j)``."""
    cu, lane_ptr = batch.cu_seqlens.tolist(), batch.lane_ptr.tolist()
    windows = [list(range(lane_ptr[q], lane_ptr[q + 1])) for q in range(batch.n_lanes)]
    for lane, j in sorted(where, reverse=True):
        windows[lane].insert(j, None)
    new_user = [bool(batch.new_user[w]) if w is not None else False for lane in windows for w in lane]
    gap = [float(batch.gap[w]) if w is not None else 0.0 for lane in windows for w in lane]
    sizes = [len(lane) for lane in windows]
    lengths = [cu[w + 1] - cu[w] if w is not None else 0 for lane in windows for w in lane]
    return dataclasses.replace(
        batch, cu_seqlens=torch.tensor([0, *np.cumsum(lengths).tolist()]), new_user=torch.tensor(new_user),
        gap=torch.tensor(gap, dtype=batch.gap.dtype), lane_ptr=torch.tensor([0, *np.cumsum(sizes).tolist()]),
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_windows_change_nothing(name, small_csr):
    """A zero-length window in a hand-built batch is a no-op: same outputs, same carried state."""
    model = _model(name)
    (batch,) = list(user_batches(small_csr, max_session_len=10))
    # Lane 0 holds 5 windows, lane 1 one, lane 2 four: empty windows inside lane 0, after its end, and
    # after lane 2's end, so the batch's last slot is empty in every lane that has one.
    holey = _insert_empty_windows(batch, [(0, 2), (0, 5), (2, 4)])
    assert holey.cu_seqlens.diff().tolist() == [3, 10, 0, 10, 5, 2, 0, 1, 4, 2, 5, 7, 0]
    assert holey.lane_ptr.tolist() == [0, 7, 8, 13]
    state = model.init_state(batch.n_lanes)
    if state is not None:
        state = torch.randn(state.shape, dtype=torch.float64)
    out, new_state = model(batch, state)
    out_holey, new_state_holey = model(holey, state)
    torch.testing.assert_close(out_holey, out, rtol=1e-12, atol=1e-12)
    if new_state is not None:
        torch.testing.assert_close(new_state_holey, new_state, rtol=1e-12, atol=1e-12)


def test_lane_slots_visit_each_lanes_windows_in_order():
    from hiertcn.models.base import lane_slots

    counts = [3, 0, 1, 5, 3, 0, 2]
    ptr = torch.tensor(np.concatenate([[0], np.cumsum(counts)]))
    batch = SessionBatch(items=torch.zeros(0, dtype=torch.long), cu_seqlens=torch.zeros(int(ptr[-1]) + 1, dtype=torch.long),
                         lane_ptr=ptr, new_user=torch.zeros(int(ptr[-1]), dtype=torch.bool),
                         gap=torch.zeros(int(ptr[-1])), target_mask=torch.zeros(0, dtype=torch.bool),
                         lane_user=torch.arange(len(counts)))  # fmt: skip
    slots = lane_slots(batch)
    expected = [[q for q, c in enumerate(counts) if c > j] for j in range(max(counts))]
    assert [lanes.tolist() for lanes, _ in slots] == expected
    assert [windows.tolist() for _, windows in slots] == [[int(ptr[q]) + j for q in lanes] for j, lanes in enumerate(expected)]


@pytest.mark.parametrize("gap_decay", ["fixed", "learned"])
def test_gap_decay_in_half_precision_matches_fp64(gap_decay):
    """fp16 holds no gap past 65,504 s: the decay is computed in fp32 (it was 0 or NaN for gaps of a day)."""
    model = _model("hiertcn", gap_decay=gap_decay)
    gaps = torch.tensor([0.0, 3600.0, 65_000.0, 86_400.0, 7 * 86_400.0, 30 * 86_400.0])
    h = torch.randn(model.gru_layers, len(gaps), model.hidden_dim, dtype=torch.float64)
    expected = model._decay(h, gaps.double())
    half = model._decay.__func__(model.half(), h.half(), gaps)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.double(), expected, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("name", ["hiertcn", "hrnn"])
def test_a_non_finite_state_does_not_leak_into_the_next_user(name, small_csr):
    model = _model(name)
    (b,) = list(user_batches(small_csr, users=[2]))
    assert bool(b.new_user[0])
    state = model.init_state(b.n_lanes).double()
    out, _ = model(b, torch.full_like(state, float("nan")))
    torch.testing.assert_close(out, model(b, state)[0])


@pytest.mark.parametrize("name, options", [("hiertcn", {}), ("hiertcn", {"recompute": True, "gap_decay": "learned"}),
                                           ("hiertcn", {"block": "gated"}), ("flat_tcn", {})])  # fmt: skip
def test_models_train_under_autocast(name, options, small_csr):
    """Under torch.autocast the TCN runs in its dtype (the kernels' dtype check used to reject fp32 weights)."""
    from hiertcn.losses import build_loss

    (b,) = list(user_batches(small_csr, max_session_len=10))
    losses, grads = [], []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = build_model(name, n_items=9, **{**TINY[name], **options}).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = model(b)
            loss = build_loss()(model, out[b.target_mask], b.items[b.target_mask])
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[1].dtype == torch.float32 and torch.isfinite(grads[1]).all()
    torch.testing.assert_close(losses[1], losses[0], rtol=0.05, atol=0.05)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.95


@pytest.mark.parametrize("option", ["dropout", "session_dropout", "user_dropout", "init_dropout"])
def test_hrnn_dropouts_act_in_training_only(option, small_csr):
    (b,) = list(user_batches(small_csr, max_session_len=3))  # several windows per user: the user GRU steps
    plain = _model("hrnn")
    dropped = _model("hrnn", **{option: 0.5})
    torch.testing.assert_close(dropped(b)[0], plain(b)[0])  # eval: no dropout
    torch.manual_seed(1)
    train_out, train_state = dropped.train()(b)
    plain_out, plain_state = plain.train()(b)
    assert not torch.allclose(train_out, plain_out) or not torch.allclose(train_state, plain_state)


@pytest.mark.parametrize("seed", [0, 1])
def test_hiertcn_gru_over_runs_equals_the_slot_by_slot_cells(seed):
    """The fused per-layer GRU over each user's run of windows (the path without gap decay) gives the
    slot-by-slot cells' contexts, final state and every gradient, on queue batches where lanes change
    user mid-batch, carry a state in, or hold no window at all."""
    from hiertcn.batching import QueueBatcher
    from hiertcn.bench import fixed_history_csr
    from hiertcn.models.base import lane_runs

    model = _model("hiertcn", n_items=50)
    csr = fixed_history_csr(9, 23, n_items=50, seed=seed)
    batches = list(QueueBatcher(csr, n_queues=4, sessions_per_lane=3, shuffle=True, seed=seed).batches(0))
    gen = torch.Generator().manual_seed(seed)
    seen = {"reset inside a run": False, "carried state": False, "empty lane": False}
    for batch in batches:
        runs = lane_runs(batch)
        seen["reset inside a run"] |= bool(batch.new_user[1:].any())
        seen["carried state"] |= not bool(runs.fresh.all())
        seen["empty lane"] |= bool((batch.lane_ptr.diff() == 0).any())
        summaries = torch.randn(batch.n_sessions, model.item_emb.embedding_dim, generator=gen, dtype=torch.float64)
        state = torch.randn(model.gru_layers, batch.n_lanes, model.hidden_dim, generator=gen, dtype=torch.float64)
        inputs = [summaries.requires_grad_(), state.requires_grad_(), *model.session_grus.parameters()]
        fused = model._context_by_runs(summaries, state, runs)
        slots = model._context_by_slots(batch, summaries, state)
        weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in fused]
        grads = [torch.autograd.grad(sum((t * w).sum() for t, w in zip(out, weights)), inputs) for out in (fused, slots)]
        for a, b in zip((*fused, *grads[0]), (*slots, *grads[1])):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert all(seen.values()), seen
    assert model.session_context.__func__ is HierTCN.session_context


def test_hiertcn_runs_path_is_taken_without_gap_decay_only(small_csr, monkeypatch):
    from hiertcn.models import hiertcn as module

    calls = []
    monkeypatch.setattr(module, "lane_runs", lambda batch: calls.append(batch) or None)
    (batch,) = list(user_batches(small_csr))
    _model("hiertcn")(batch)
    _model("hiertcn", gap_decay="fixed")(batch)
    assert len(calls) == 1  # the decaying model never asks for runs; the plain one fell back to slots (None)


def test_lane_runs_are_int64_host_built_indices(small_csr):
    from hiertcn.models.base import lane_runs

    (batch,) = list(user_batches(small_csr))
    runs = lane_runs(batch)
    for name in ("window", "lane", "flat_valid", "last_run", "last_step", "last_lane"):
        assert getattr(runs, name).dtype == torch.int64, name  # index_copy and gathers need int64
    assert runs.fresh.dtype == torch.bool
    assert int(runs.window.max()) == batch.n_sessions  # past a run's end: the appended zero row


def test_a_training_step_reads_no_layout_back_from_its_batch(small_csr, monkeypatch):
    """A batch built on the host carries its lane runs and target positions: the model's forward and the
    loss step use those, computing no runs and calling no ``nonzero`` (each a host sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hiertcn.models import base
    from hiertcn.train import LossStep, training_loss

    class NoNonzero(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert func.overloadpacket.__name__ != "nonzero", "a training step called nonzero"
            return func(*args, **(kwargs or {}))

    def refuse(*args):
        raise AssertionError("the model rebuilt the batch's lane runs")

    model = _model("hiertcn")
    step = LossStep(model, training_loss("softmax", None))
    (batch,) = list(user_batches(small_csr))
    expected, _ = step(batch, None)
    monkeypatch.setattr(base, "lane_runs_of", refuse)
    with NoNonzero():
        loss, _ = step(batch, None)
        loss.backward()
    assert torch.equal(loss, expected)


def test_a_training_step_checks_item_ids_on_the_host(small_csr, monkeypatch):
    """The loss's item-id check reads the ids back from the device (a sync per step on a GPU): the trainer
    skips it when the batch's host bounds lie in the catalogue, and keeps it, with its error, otherwise."""
    from hiertcn import losses
    from hiertcn.train import LossStep, training_loss

    model = _model("hiertcn")
    (batch,) = list(user_batches(small_csr))
    assert batch.item_bounds[1] < model.n_items
    expected, _ = LossStep(model, training_loss("softmax", None))(batch, None)

    def refuse(*args, **kwargs):
        raise AssertionError("the loss read the item ids back")

    with monkeypatch.context() as patch:
        patch.setattr(losses, "check_item_ids", refuse)
        loss, _ = LossStep(model, training_loss("softmax", None))(batch, None)
    assert torch.equal(loss, expected)
    # Impressions past the catalogue (the model's 9 items): the loss still checks, and names them.
    imp = {"imp_ptr": torch.arange(batch.n_tokens + 1), "imp_item": torch.full((batch.n_tokens,), 9)}
    shown = dataclasses.replace(batch, **imp)
    assert shown.item_bounds[1] == 9
    with pytest.raises(ValueError, match="impressions must be item ids"):
        LossStep(model, losses.build_loss("bpr"))(shown, None)


def test_hiertcn_runs_path_keeps_a_non_finite_window_to_its_own_run():
    """Steps past a run's end read a zero row, not another window: a NaN summary in the batch's last
    window (what padding used to repeat) leaves the other runs' gradients finite, as the cells do."""
    from hiertcn.batching import QueueBatcher
    from hiertcn.bench import fixed_history_csr
    from hiertcn.models.base import lane_runs

    model = _model("hiertcn", n_items=50)
    csr = fixed_history_csr(9, 23, n_items=50, seed=0)
    batch = next(iter(QueueBatcher(csr, n_queues=4, sessions_per_lane=3, shuffle=False).batches(0)))
    runs, last = lane_runs(batch), batch.n_sessions - 1
    assert bool((runs.window == batch.n_sessions).any())  # some run is padded
    summaries = torch.randn(batch.n_sessions, model.item_emb.embedding_dim, dtype=torch.float64)
    summaries[last] = float("nan")
    summaries.requires_grad_()
    state = torch.zeros(model.gru_layers, batch.n_lanes, model.hidden_dim, dtype=torch.float64)
    context, _ = model._context_by_runs(summaries, state, runs)
    (grad,) = torch.autograd.grad(context[torch.isfinite(context).all(1)].sum(), summaries)
    own_run = next(row for row in runs.window.tolist() if last in row)
    others = [w for w in range(batch.n_sessions) if w not in own_run]
    assert others and torch.isfinite(grad[others]).all()


@pytest.mark.cuda
def test_cuda_hiertcn_gradients_in_eval_mode_and_under_autocast(small_csr):
    """cuDNN's RNN backward refuses eval mode: the fused session GRU asks for training mode whenever
    gradients flow. And it runs under fp16 autocast with the cells' fp32 weights."""
    model = build_model("hiertcn", n_items=9, **TINY["hiertcn"]).cuda().eval()
    (batch,) = list(user_batches(small_csr))
    batch = batch.to("cuda")
    out, _ = model(batch)
    out.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast("cuda", dtype=torch.float16):
        out, state = model(batch, model.init_state(batch.n_lanes, "cuda"))
    assert torch.isfinite(out).all() and state.dtype == torch.float32
    summaries = torch.randn(batch.n_sessions, model.item_emb.embedding_dim, device="cuda")
    state = torch.randn(model.gru_layers, batch.n_lanes, model.hidden_dim, device="cuda")
    from hiertcn.models.base import lane_runs

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's GRU against GRUCell, both fp32
        for a, b in zip(model._context_by_runs(summaries, state, lane_runs(batch)),
                        model._context_by_slots(batch, summaries, state)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_lane_runs_match_the_host_built_ones(small_csr):
    """On CUDA a batch's runs arrive with it (one copy per dtype, non-blocking from pinned memory), and a
    batch built from CUDA tensors reads them back in one copy: the same values, dtypes and shapes as the
    CPU batch's, and the same target positions."""
    from hiertcn.models.base import lane_runs

    (batch,) = list(user_batches(small_csr))
    moved = batch.to("cuda", non_blocking=True)
    built = SessionBatch(**{f.name: getattr(batch, f.name).cuda() for f in dataclasses.fields(batch)
                            if f.init and getattr(batch, f.name) is not None})  # fmt: skip
    assert built.runs is None and built.target_index is None
    assert torch.equal(moved.target_index.cpu(), batch.target_index)
    for on_gpu in (lane_runs(moved), lane_runs(built)):
        for field in dataclasses.fields(batch.runs):
            a, b = getattr(batch.runs, field.name), getattr(on_gpu, field.name)
            assert b.is_cuda and b.dtype == a.dtype and b.shape == a.shape, field.name
            assert torch.equal(a, b.cpu()), field.name


def test_hiertcn_session_gru_keeps_gru_cell_init_and_loads_gru_cell_checkpoints():
    """The session GRU (one nn.GRU per layer, flat weights for cuDNN) draws what GRUCells drew from the
    same seed, and a state dict saved when it was GRUCells (``cells.{layer}.weight_ih``...) loads."""
    for size in [(6, 5), (5, 5)]:
        torch.manual_seed(3)
        gru = torch.nn.GRU(*size, batch_first=True)
        torch.manual_seed(3)
        cell = torch.nn.GRUCell(*size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert torch.equal(getattr(gru, f"{name}_l0"), getattr(cell, name)), name
    reference = build_model("hiertcn", n_items=9, **TINY["hiertcn"])
    old = {}
    for key, value in reference.state_dict().items():
        if key.startswith("session_grus."):
            _, layer, name = key.split(".")
            key = f"cells.{layer}.{name.removesuffix('_l0')}"
        old[key] = value + 1 if "bias" in key else value  # changed, so the load is seen
    fresh = build_model("hiertcn", n_items=9, **TINY["hiertcn"])
    fresh.load_state_dict(old)  # strict: every key is used
    torch.testing.assert_close(fresh.session_grus[1].bias_hh_l0, reference.session_grus[1].bias_hh_l0 + 1)


def test_embed_project_shifted_matches_the_plain_ops_and_keeps_no_activation():
    """Values, gradients and double backward of (emb, linear(shift_right(emb))) as the plain ops give them,
    empty and one-row segments included; for backward it keeps the indices, no (T, D) float rows."""
    import torch.nn.functional as F

    from hiertcn.models.base import embed_project_shifted, shift_right

    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 3, 3, 4, 9, 9, 12])
    items = torch.randint(0, 7, (12,), generator=gen)
    table = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w_emb, w_out = torch.randn(12, 5, generator=gen, dtype=torch.float64), torch.randn(12, 4, generator=gen,
                                                                                        dtype=torch.float64)

    def fused(t, w):
        emb, out = embed_project_shifted(t, items, w, offsets)
        return (emb * w_emb).sum() + (out * w_out).sum()

    def plain(t, w):
        emb = F.embedding(items, t)
        return (emb * w_emb).sum() + (F.linear(shift_right(emb, offsets), w) * w_out).sum()

    for a, b in zip(embed_project_shifted(table, items, weight, offsets),
                    (F.embedding(items, table), F.linear(shift_right(F.embedding(items, table), offsets), weight))):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(f(table, weight), (table, weight)) for f in (fused, plain)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradgradcheck(fused, (table, weight))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        embed_project_shifted(table, items, weight, offsets)
    assert not [t for t in saved if t.is_floating_point() and t.shape[0] == items.numel()]


def test_embed_project_shifted_under_cpu_autocast_projects_in_bf16():
    import torch.nn.functional as F

    from hiertcn.models.base import embed_project_shifted, shift_right

    offsets, items = torch.tensor([0, 2, 6]), torch.tensor([1, 0, 2, 2, 1, 0])
    table, weight = torch.randn(3, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, out = embed_project_shifted(table, items, weight, offsets)
        expected = F.linear(shift_right(F.embedding(items, table), offsets), weight)
    assert emb.dtype == torch.float32 and out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and table.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as F.linear: autocast leaves float64 alone
        _, out64 = embed_project_shifted(table.double(), items, weight.double(), offsets)
    assert out64.dtype == torch.float64


def test_gru_in_time_chunks_is_the_packed_gru_and_never_steps_past_a_sequence_end():
    """GRU4Rec's CPU path: the packed GRU's values and gradients, in chunks of at most ``chunk`` steps
    over only the sequences still running (torch's packed GRU backward is quadratic on the CPU)."""
    from hiertcn.models.baselines import gru_in_time_chunks

    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 5, 2, batch_first=True).double()
    lengths = torch.tensor([1, 4, 5, 9, 13, 3, 9, 8])  # ends on, before and after chunk boundaries (4)
    x = torch.randn(len(lengths), 13, 6, dtype=torch.float64, requires_grad=True)
    valid = torch.arange(13)[None] < lengths[:, None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected = torch.nn.utils.rnn.pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=13)[0][valid]
    calls = []
    gru.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[:2])))
    got = gru_in_time_chunks(gru, x, lengths, chunk=4)[valid]
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), [x, *gru.parameters()]),
                    torch.autograd.grad((expected * weights).sum(), [x, *gru.parameters()]), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)
    assert max(steps for _, steps in calls) <= 4
    assert sum(n * steps for n, steps in calls) == int(lengths.sum())  # no step past a sequence's end



def test_gru4rec_on_cpu_runs_its_gru_in_time_chunks_as_the_packed_gru(monkeypatch, small_csr):
    from hiertcn.models import baselines

    chunked, calls = baselines.gru_in_time_chunks, []

    def spy(gru, padded, lengths, chunk=256):
        calls.append(chunk)
        return chunked(gru, padded, lengths, chunk=2)  # several chunks even on the tiny log

    def packed(gru, padded, lengths, chunk=256):
        out = gru(torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False))[0]
        return torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])[0]

    (b,) = list(user_batches(small_csr, max_session_len=10))
    model = build_model("gru4rec", n_items=9, **TINY["gru4rec"]).double()
    outs = []
    for how in (spy, packed):
        monkeypatch.setattr(baselines, "gru_in_time_chunks", how)
        outs.append(model(b)[0])
    assert calls == [256]
    torch.testing.assert_close(outs[0], outs[1])
