"""Two gloo ranks under DistributedDataParallel against one process on the same data."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hiertcn.train import batch_source, fit
from tests.test_train import TinyLaneGRU, ce_loss, lane_evaluate, planted_dataset, small_config

CONFIG = {"epochs": 4, "lr": 0.05, "n_queues": 2, "checkpoint_every": 0}


class _Killed(Exception):
    pass


def _kill_at(step):
    def on_step(done):
        if done == step:
            raise _Killed(f"stopped after step {step}")

    return on_step


def _rank(rank, world, init_file, run_dir, overrides=None, resume=False, kill_at=None, n_users=32):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TinyLaneGRU()
        on_step = None if kill_at is None else _kill_at(kill_at)
        result = fit(model, planted_dataset(n_users=n_users), small_config(**{**CONFIG, **(overrides or {})}), run_dir=run_dir, progress=False,
                     loss_fn=ce_loss, evaluate_fn=lane_evaluate, resume=resume, on_step=on_step)  # fmt: skip
        torch.save({"metrics": result.metrics, "weights": model.state_dict()}, f"{run_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_rank, args=(2, tmp_path / "init", tmp_path / "ddp"), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    # DDP keeps the replicas identical, and every rank reports the same metrics.
    for a, b in zip(ranks[0]["weights"].values(), ranks[1]["weights"].values(), strict=True):
        torch.testing.assert_close(a, b)
    assert ranks[0]["metrics"]["mrr"] == ranks[1]["metrics"]["mrr"]
    # Each rank scored its own users; the gathered metrics equal one process scoring everyone.
    final = TinyLaneGRU()
    final.load_state_dict(torch.load(tmp_path / "ddp" / "best.pt", weights_only=False)["model"])
    with torch.no_grad():
        whole = lane_evaluate(final, planted_dataset(n_users=32), roles=(2,))
    assert ranks[0]["metrics"]["n_events"] == whole["n_events"]
    assert abs(ranks[0]["metrics"]["mrr"] - whole["mrr"]) < 1e-6
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["mrr"] == ranks[0]["metrics"]["mrr"]

    torch.manual_seed(0)
    single = fit(TinyLaneGRU(), planted_dataset(n_users=32), small_config(**{**CONFIG, "n_queues": 4}),
                 run_dir=tmp_path / "single", progress=False, loss_fn=ce_loss, evaluate_fn=lane_evaluate)  # fmt: skip
    # Each rank trains half the users in 2 lanes; one process trains all of them in 4: same data, same lanes in all.
    assert abs(ranks[0]["metrics"]["mrr"] - single.metrics["mrr"]) < 0.1
    assert single.metrics["mrr"] > 0.4
    # Throughput counts every rank's interactions (rank 0's alone would be about half of them).
    def trained(metrics):
        return metrics["interactions_per_s"] * metrics["train_time_s"]

    assert trained(ranks[0]["metrics"]) == pytest.approx(trained(ranks[1]["metrics"]))
    # Every planned training interaction of every epoch, also where one rank has more batches than the other.
    # (Not the same count for both: the windows left queued after the last epoch depend on the lanes.)
    def planned(config, users=None):
        source = batch_source(TinyLaneGRU(), planted_dataset(n_users=32), config, users=users)
        return sum(batch.n_tokens for epoch in range(config.epochs) for batch in source.batches(epoch))

    ddp_config = small_config(**CONFIG)
    assert trained(ranks[0]["metrics"]) == pytest.approx(sum(planned(ddp_config, range(r, 32, 2)) for r in range(2)))
    assert trained(single.metrics) == pytest.approx(planned(small_config(**{**CONFIG, "n_queues": 4})))


def test_ranks_stop_together_on_the_time_limit(tmp_path):
    # Each rank's clock alone would stop it at a different step; they must agree or DDP hangs.
    overrides = {"epochs": 50, "max_time": 1e-6}
    mp.spawn(_rank, args=(2, tmp_path / "init", tmp_path / "ddp", overrides), nprocs=2, join=True)
    steps = [torch.load(tmp_path / "ddp" / f"rank{r}.pt")["metrics"]["steps"] for r in range(2)]
    assert steps == [1, 1]


@pytest.mark.parametrize("n_users, kill_at", [(32, 3), (29, 14)])
def test_a_killed_two_rank_run_resumes_exactly(tmp_path, n_users, kill_at):
    # Mid-epoch checkpoints keep every rank's carried lane state: a resumed run ends with the same weights.
    # 29 users: rank 1 has 12 batches in the first epoch to rank 0's 15, so it resumes among its idle steps.
    overrides = {"epochs": 2, "checkpoint_every": 1}
    mp.spawn(_rank, args=(2, tmp_path / "init-a", tmp_path / "whole", overrides, False, None, n_users), nprocs=2,
             join=True)  # fmt: skip
    with pytest.raises(mp.ProcessRaisedException, match=f"stopped after step {kill_at}"):
        mp.spawn(_rank, args=(2, tmp_path / "init-b", tmp_path / "killed", overrides, False, kill_at, n_users),
                 nprocs=2, join=True)  # fmt: skip
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["run"]["batch"] > 0  # mid-epoch
    mp.spawn(_rank, args=(2, tmp_path / "init-c", tmp_path / "killed", overrides, True, None, n_users), nprocs=2,
             join=True)  # fmt: skip
    whole, resumed = (torch.load(tmp_path / run / "rank1.pt")["weights"] for run in ("whole", "killed"))
    for a, b in zip(whole.values(), resumed.values(), strict=True):
        assert torch.equal(a, b)



def test_more_ranks_than_training_users_is_a_clear_error(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="2 ranks but some get no user with TRAIN sessions"):
        mp.spawn(_rank, args=(2, tmp_path / "init", tmp_path / "ddp", None, False, None, 1), nprocs=2, join=True)


def test_torchrun_trains_from_a_cold_cache(tmp_path):
    # The README's DDP command on a log no rank has prepared yet: rank 0 builds the cache, the other waits.
    import subprocess
    import sys

    from hiertcn.data.synthetic import generate_xing

    log = generate_xing(tmp_path / "xing", n_users=120, n_items=80, seed=1).interactions
    (tmp_path / "small.toml").write_text("n_queues = 4\n[model_config.hiertcn]\nembedding_dim = 8\nhidden_dim = 8\n"
                                         "channels = 8\n")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hiertcn",
           "train", "--data", str(log), "--cache-dir", str(tmp_path / "cache"), "--config", str(tmp_path / "small.toml"),
           "--epochs", "1", "--quiet", "--json", "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["n_events"] > 0
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one entry, built once
