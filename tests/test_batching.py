import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from hiertcn.batching import QueueBatcher, SessionBatch
from hiertcn_kernels.packing import SessionCSR


def make_csr(sessions_per_user, seed=0, n_items=50):
    """A SessionCSR from a list (one per user) of session lengths."""
    rng = np.random.default_rng(seed)
    user_ptr, session_ptr, ts = [0], [0], []
    for lengths in sessions_per_user:
        t = 1000
        for n in lengths:
            session_ptr.append(session_ptr[-1] + n)
            ts.extend(t + 10 * np.arange(n))
            t += 10 * n + 5000
        user_ptr.append(user_ptr[-1] + len(lengths))
    n = session_ptr[-1]
    return SessionCSR(
        user_ptr=np.array(user_ptr, dtype=np.int64),
        session_ptr=np.array(session_ptr, dtype=np.int64),
        item=rng.integers(0, n_items, n).astype(np.int64),
        timestamp=np.array(ts, dtype=np.int64),
        user_ids=np.arange(len(sessions_per_user), dtype=np.int64) * 7,
        item_ids=np.arange(n_items, dtype=np.int64),
    )


def lane_windows(batch):
    """Per lane: list of (items tuple, new_user) of its windows."""
    cu, lp = batch.cu_seqlens.tolist(), batch.lane_ptr.tolist()
    items = batch.items.tolist()
    return [
        [(tuple(items[cu[w] : cu[w + 1]]), bool(batch.new_user[w])) for w in range(lp[q], lp[q + 1])]
        for q in range(batch.n_lanes)
    ]


def test_every_interaction_once_with_overflow_kept_in_windows():
    rng = np.random.default_rng(1)
    csr = make_csr([list(rng.integers(1, 30, rng.integers(1, 6))) for _ in range(17)])
    batcher = QueueBatcher(csr, n_queues=3, sessions_per_lane=2, max_session_len=7, seed=5)
    tokens = 0
    for batch in batcher.batches(epoch=0):
        assert batch.n_lanes == 3
        lengths, per_lane = batch.cu_seqlens.diff(), batch.lane_ptr.diff()
        assert ((lengths > 0) & (lengths <= 7)).all() and (per_lane <= 2).all()
        assert batch.target_mask.all()
        assert ((per_lane == 0) == (batch.lane_user == -1)).all()
        tokens += batch.n_tokens
    assert tokens == csr.n_interactions == batcher.n_interactions


def test_lane_streams_are_whole_users_in_time_order_and_state_resets_mark_users():
    rng = np.random.default_rng(2)
    lengths = [list(rng.integers(1, 12, rng.integers(1, 5))) for _ in range(11)]
    csr = make_csr(lengths)
    batcher = QueueBatcher(csr, n_queues=2, sessions_per_lane=3, max_session_len=4, seed=0)
    streams = [[], []]  # per lane: list of (new_user, items)
    for batch in batcher.batches(epoch=3):
        for q, windows in enumerate(lane_windows(batch)):
            streams[q].extend(windows)
    users = []
    for stream in streams:
        for items, new_user in stream:
            if new_user:
                users.append([])
            users[-1].extend(items)
    assert sorted(users) == sorted(csr.item[csr.session_ptr[csr.user_ptr[u]] : csr.session_ptr[csr.user_ptr[u + 1]]].tolist() for u in range(csr.n_users))
    assert len(users) == csr.n_users


def test_truncate_keeps_first_items_of_long_sessions():
    csr = make_csr([[9], [3, 2]])
    batcher = QueueBatcher(csr, n_queues=1, sessions_per_lane=5, max_session_len=4, truncate=True, shuffle=False)
    (batch,) = batcher.batches(0)
    assert batch.cu_seqlens.tolist() == [0, 4, 7, 9]
    assert batch.items[:4].tolist() == csr.item[:4].tolist()
    assert batch.new_user.tolist() == [True, True, False]
    assert batch.lane_user.tolist() == [1]


def test_gap_and_new_user_of_split_sessions():
    csr = make_csr([[6, 2]])
    (batch,) = QueueBatcher(csr, n_queues=1, sessions_per_lane=5, max_session_len=4).batches(0)
    assert batch.new_user.tolist() == [True, False, False]
    ts = csr.timestamp
    assert batch.gap.tolist() == [0.0, float(ts[4] - ts[3]), float(ts[6] - ts[5])]
    assert batch.gap.dtype == torch.float32


def test_shortest_queue_gets_new_user_and_state_carries_across_batches():
    # user 0 has 4 sessions, users 1, 2 one each; 2 queues of 1 session per batch
    csr = make_csr([[2, 2, 2, 2], [3], [3]])
    batcher = QueueBatcher(csr, n_queues=2, sessions_per_lane=1, shuffle=False)
    batches = list(batcher.batches(0))
    assert [b.lane_user.tolist() for b in batches] == [[0, 1], [0, 2], [0, -1], [0, -1]]
    assert [b.new_user.tolist() for b in batches] == [[True, True], [False, True], [False], [False]]


def test_include_targets_users_and_resume_start():
    csr = make_csr([[3, 4, 5]] * 6)
    include = np.ones(csr.n_sessions, dtype=bool)
    include[2::3] = False  # each user's last session held out
    targets = include.copy()
    targets[0::3] = False  # first session is context only
    batcher = QueueBatcher(csr, n_queues=2, sessions_per_lane=2, include=include, targets=targets, users=np.array([1, 3, 4]))
    batches = list(batcher.batches(1))
    assert sum(b.n_tokens for b in batches) == 3 * 7 == batcher.n_interactions
    assert sum(int(b.target_mask.sum()) for b in batches) == 3 * 4
    assert set(torch.cat([b.lane_user for b in batches]).tolist()) <= {-1, 1, 3, 4}
    resumed = list(batcher.batches(1, start=1))
    assert all(torch.equal(a.items, b.items) for a, b in zip(batches[1:], resumed, strict=True))
    assert batcher.plan(1) is batcher.plan(1)
    other = [b.items for b in batcher.batches(2)]
    assert batcher.n_batches(2) == len(other)


def test_epochs_are_shuffled_and_repeatable():
    csr = make_csr([[2]] * 40)
    a = QueueBatcher(csr, n_queues=4, seed=3)
    b = QueueBatcher(csr, n_queues=4, seed=3)
    first = [x.lane_user.tolist() for x in a.batches(0)]
    assert first == [x.lane_user.tolist() for x in b.batches(0)]
    assert first != [x.lane_user.tolist() for x in a.batches(1)]


def _windows_by_lane(batcher, epoch):
    """Per lane, the window indices it runs in ``epoch``, in order."""
    lanes = [[] for _ in range(batcher.n_queues)]
    for batch in batcher.plan(epoch):
        for q, windows in enumerate(batch):
            lanes[q].extend(windows.tolist())
    return lanes


def test_carry_over_fills_every_lane_and_continues_the_stream_across_epochs():
    rng = np.random.default_rng(4)
    csr = make_csr([list(rng.integers(1, 9, rng.integers(1, 12))) for _ in range(60)])
    drained = QueueBatcher(csr, n_queues=4, sessions_per_lane=3, max_session_len=5, seed=1)
    batcher = QueueBatcher(csr, n_queues=4, sessions_per_lane=3, max_session_len=5, seed=1, carry_over=True)
    assert any(sum(len(lane) for lane in b) < 12 for b in drained.plan(0))  # draining leaves a tail
    n_windows = len(batcher._start)
    seen = Counter()
    for epoch in range(4):
        plan = batcher.plan(epoch)
        assert plan and all(len(lane) == 3 for b in plan for lane in b)  # every lane full
        seen.update(w for b in plan for lane in b for w in lane.tolist())
    left = [w for lane in batcher.carried_in(4) for w in lane]
    assert left and set(Counter(left).values()) == {1}
    assert seen + Counter(left) == Counter({w: 4 for w in range(n_windows)})  # each window once per epoch
    # A lane's stream runs on across the boundary: the windows left queued open the next epoch in that lane,
    # in order (so the lane's carried state is theirs), and a fresh batcher plans any epoch the same way.
    for epoch in range(3):
        for carried, nxt in zip(batcher.carried_in(epoch + 1), _windows_by_lane(batcher, epoch + 1), strict=True):
            assert nxt[: len(carried)] == carried
    fresh = QueueBatcher(csr, n_queues=4, sessions_per_lane=3, max_session_len=5, seed=1, carry_over=True)
    assert [[lane.tolist() for lane in b] for b in fresh.plan(3)] == [[lane.tolist() for lane in b]
                                                                        for b in batcher.plan(3)]  # fmt: skip


@pytest.mark.parametrize("n_users", [3, 5, 6, 8, 13, 40])
def test_carry_over_keeps_each_window_once_per_epoch_and_the_queues_bounded(n_users):
    """From fewer users than lanes through the border (carried windows fill the first batch, then the epoch runs
    dry) to many: over 12 epochs every window runs once per epoch, counting those left queued at the end, and
    what an epoch leaves queued stays below a lane's fill plus one user's windows per lane."""
    rng = np.random.default_rng(n_users)
    csr = make_csr([list(rng.integers(1, 9, rng.integers(1, 9))) for _ in range(n_users)])
    batcher = QueueBatcher(csr, n_queues=4, sessions_per_lane=3, max_session_len=5, seed=0, carry_over=True)
    most = 3 - 1 + max(np.diff(batcher._wptr))
    seen = Counter()
    for epoch in range(12):
        seen.update(w for b in batcher.plan(epoch) for lane in b for w in lane.tolist())
        assert all(len(lane) <= most for lane in batcher.carried_in(epoch + 1))
    left = Counter(w for lane in batcher.carried_in(12) for w in lane)
    assert seen + left == Counter({w: 12 for w in range(len(batcher._start))})


def test_each_epoch_is_planned_once(monkeypatch):
    csr = make_csr([[2, 3]] * 30)
    calls = []
    real = QueueBatcher._plan
    monkeypatch.setattr(QueueBatcher, "_plan", lambda self, epoch: calls.append(epoch) or real(self, epoch))
    for carry_over in (True, False):
        batcher, calls[:] = QueueBatcher(csr, n_queues=4, sessions_per_lane=2, carry_over=carry_over), []
        for epoch in range(3):
            batcher.n_batches(epoch)
            list(batcher.batches(epoch, start=1))
        assert calls == [0, 1, 2]
        calls[:] = []
        QueueBatcher(csr, n_queues=4, sessions_per_lane=2, carry_over=carry_over).plan(2)  # a resume at epoch 2
        assert sorted(calls) == ([0, 1, 2] if carry_over else [2])


def test_carry_over_drains_an_epoch_that_never_fills_every_lane():
    csr = make_csr([[2, 3, 2]] * 3)  # 3 users, 4 lanes: no batch is ever full
    drained = QueueBatcher(csr, n_queues=4, sessions_per_lane=2, seed=2)
    carried = QueueBatcher(csr, n_queues=4, sessions_per_lane=2, seed=2, carry_over=True)
    for epoch in range(3):
        assert [[lane.tolist() for lane in b] for b in carried.plan(epoch)] == [[lane.tolist() for lane in b]
                                                                                 for b in drained.plan(epoch)]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_queues": 0}, "n_queues"),
        ({"max_session_len": -1}, "max_session_len"),
        ({"include": np.ones(2, dtype=bool)}, "include"),
        ({"targets": np.ones(3, dtype=np.int64)}, "targets"),
        ({"users": np.array([5])}, "users"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    csr = make_csr([[2, 1], [1]])
    with pytest.raises(ValueError, match=match):
        QueueBatcher(csr, **kwargs)


def random_impressions(csr, seed=0, n_items=50):
    """``(imp_ptr, imp_item)`` over ``csr``'s interactions: 0..6 random items each (some empty)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 7, csr.n_interactions)
    imp_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return imp_ptr, rng.integers(0, n_items, int(imp_ptr[-1])).astype(np.int64)


def test_batches_carry_each_tokens_impressions():
    from hiertcn.batching import user_batches

    csr = make_csr([[3, 25], [1, 4], [2, 2, 9], [5]], seed=4)
    imp_ptr, imp_item = random_impressions(csr)
    lists = [imp_item[a:b].tolist() for a, b in itertools.pairwise(imp_ptr)]
    # Tag each interaction with a unique item so a token's interaction can be read off its item.
    tags = np.arange(csr.n_interactions)
    csr = SessionCSR(csr.user_ptr, csr.session_ptr, tags, csr.timestamp, csr.user_ids, tags)
    impressions = (imp_ptr, imp_item)
    queue = QueueBatcher(csr, n_queues=2, sessions_per_lane=2, max_session_len=4, impressions=impressions)
    whole_users = user_batches(csr, max_session_len=4, batch_users=2, impressions=impressions)
    batches = [*queue.batches(0), *whole_users]
    for batch in batches:
        assert batch.has_impressions and batch.imp_ptr.shape == (batch.n_tokens + 1,)
        got = [batch.imp_item[a:b].tolist() for a, b in zip(batch.imp_ptr[:-1], batch.imp_ptr[1:])]
        assert got == [lists[i] for i in batch.items.tolist()]
    assert not next(QueueBatcher(csr, n_queues=2).batches(0)).has_impressions  # none given, none carried

    batch = batches[0]
    mask = torch.arange(batch.n_tokens) % 2 == 0
    matrix = batch.impression_matrix(3, mask)
    expected = [(lists[i] + [-1] * 3)[:3] for i in batch.items[mask].tolist()]
    assert matrix.dtype == torch.int64 and matrix.tolist() == expected
    # sample: k different positions of each list (all of a list no longer than k, then -1), varying per draw.
    torch.manual_seed(0)
    draws = [batch.impression_matrix(3, mask, sample=True) for _ in range(50)]
    for row, i in enumerate(batch.items[mask].tolist()):
        picked = [d[row].tolist() for d in draws]
        for p in picked:
            kept = [x for x in p if x >= 0]
            assert len(kept) == min(3, len(lists[i])) and not Counter(kept) - Counter(lists[i])  # no repeats
            assert p[len(kept):] == [-1] * (3 - len(kept))
        if len(lists[i]) > 3:  # every impression gets drawn, not just the first three
            assert {x for p in picked for x in p} == set(lists[i])

    moved = batch.to("meta")
    assert moved.imp_ptr.device.type == moved.imp_item.device.type == moved.items.device.type == "meta"
    assert moved.imp_ptr.shape == batch.imp_ptr.shape
    plain = next(QueueBatcher(csr, n_queues=2).batches(0)).to("meta")
    assert plain.imp_ptr is None and plain.imp_item is None


def test_bad_impressions_are_named():
    csr = make_csr([[3, 2]])
    imp_ptr, imp_item = random_impressions(csr)
    with pytest.raises(ValueError, match="n_interactions"):
        QueueBatcher(csr, impressions=(imp_ptr[:-1], imp_item))
    with pytest.raises(TypeError, match="imp_ptr, imp_item"):
        QueueBatcher(csr, impressions=imp_ptr)
    batch = next(QueueBatcher(csr).batches(0))
    with pytest.raises(ValueError, match="no impressions"):
        batch.impression_matrix(3)
    with pytest.raises(ValueError, match="k must"):
        next(QueueBatcher(csr, impressions=(imp_ptr, imp_item)).batches(0)).impression_matrix(0)


def _device_read_runs(batch):
    """The batch's lane runs as a model reads them back from a batch built on a device (no runs kept)."""
    from dataclasses import fields

    from hiertcn.models.base import lane_runs

    bare = SessionBatch(**{f.name: getattr(batch, f.name) for f in fields(batch) if f.init})
    bare.runs = bare.target_index = None  # as a batch built from device tensors has them
    return lane_runs(bare)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batches_carry_their_lane_runs_and_target_index(seed):
    """Each batch is built with the layouts a training step would read back from the device: the lane
    runs (as the model's own host read gives them) and the positions of its targets."""
    from hiertcn.batching import user_batches

    csr = make_csr([[3, 2, 4], [1], [2, 2, 2, 2, 2], [5, 1], [1, 1, 1]], seed=seed)
    score = np.random.default_rng(seed).random(csr.n_sessions) < 0.5
    batches = [*QueueBatcher(csr, n_queues=2, sessions_per_lane=2, seed=seed).batches(0),
               *user_batches(csr, batch_users=2, score_sessions=score)]  # fmt: skip
    for batch in batches:
        assert torch.equal(batch.target_index, batch.target_mask.nonzero().squeeze(1))
        expected = _device_read_runs(batch)
        for name in ("window", "lane", "fresh", "flat_valid", "last_run", "last_step", "last_lane"):
            assert torch.equal(getattr(batch.runs, name), getattr(expected, name)), name


def test_replaced_batch_layouts_are_derived_afresh():
    """``dataclasses.replace`` builds the derived layouts of the new fields, not the old batch's."""
    import dataclasses

    batch = next(QueueBatcher(make_csr([[2, 2], [3]]), n_queues=2, shuffle=False).batches(0))
    one_lane = dataclasses.replace(batch, lane_ptr=torch.tensor([0, batch.n_sessions]), lane_user=torch.tensor([1]))
    assert one_lane.runs.lane.tolist() == [0] * len(one_lane.runs.lane) != batch.runs.lane.tolist()
    no_targets = dataclasses.replace(batch, target_mask=torch.zeros_like(batch.target_mask))
    assert no_targets.target_index.numel() == 0 < batch.target_index.numel()


def test_batch_moves_in_one_copy_per_dtype():
    """Off the host a batch moves as one flat tensor per dtype, split into views of the fields' shapes, the
    derived layouts included; on the host ``to`` is the batch itself."""
    from hiertcn.batching import moved_by_dtype

    batch = next(QueueBatcher(make_csr([[2, 2], [3], [1, 4]]), n_queues=2, sessions_per_lane=3).batches(0))
    assert batch.to("cpu") is batch
    tensors = [batch.items, batch.new_user, batch.runs.window, batch.gap, batch.cu_seqlens, batch.runs.fresh]
    copies = []
    moved = moved_by_dtype(tensors, lambda flat: copies.append(flat.dtype) or flat.clone())
    assert copies == [torch.int64, torch.bool, torch.float32]
    for a, b in zip(tensors, moved):
        assert torch.equal(a, b) and b.dtype == a.dtype and a.data_ptr() != b.data_ptr()
    meta = batch.to("meta")
    assert meta.runs.window.device.type == meta.target_index.device.type == meta.gap.device.type == "meta"
    assert meta.runs.window.shape == batch.runs.window.shape and meta.target_index.shape == batch.target_index.shape


@pytest.mark.cuda
def test_cuda_batch_moves_without_a_host_read():
    """A host batch moved to the GPU carries its layouts and the facts of its offsets: the lane runs, the
    target positions and the offset checks of every kernel op need no read back (no sync)."""
    from hiertcn.models.base import lane_runs
    from hiertcn_kernels._checks import offsets_facts

    batch = next(QueueBatcher(make_csr([[2, 2], [3], [1, 4]]), n_queues=2, sessions_per_lane=3).batches(0))
    moved = batch.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        facts, runs = offsets_facts(moved.cu_seqlens), lane_runs(moved)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert facts == offsets_facts(batch.cu_seqlens) and runs is moved.runs
    assert torch.equal(moved.target_index.cpu(), batch.target_index)


def test_batches_know_their_item_bounds_on_the_host():
    """The least and largest item id of a batch's items and impressions, from its construction (the trainer
    checks them against the catalogue without reading the ids back); moved along by ``to``."""
    csr = make_csr([[3, 2], [4], [1, 1, 2]], seed=3)
    imp_ptr, imp_item = random_impressions(csr, n_items=80)  # impressions reach past the interactions' items
    for impressions in (None, (imp_ptr, imp_item)):
        for batch in QueueBatcher(csr, n_queues=2, impressions=impressions).batches(0):
            ids = torch.cat([batch.items] + ([batch.imp_item] if impressions else []))
            assert batch.item_bounds == (int(ids.min()), int(ids.max()))
            assert batch.to("meta").item_bounds == batch.item_bounds
