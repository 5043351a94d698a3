"""``hiertcn bench`` pieces: the cost model, the roofline, the epoch estimate, the scaling study (tiny sizes).

Nothing here asserts a speed: timings only have to be finite and positive.
"""

import json
import math

import pytest
import torch

from hiertcn import bench, cli
from hiertcn.data.splits import split_last_session
from tests.test_train import planted_dataset

CPU = torch.device("cpu")


def test_op_cost_matches_hand_count():
    # T = 10 tokens, C = 4 channels, K = 5 taps, 3 segments, fp32.
    # relu: 3 convs x 2*T*C*C*K = 4800 FLOPs; (5*T*C + 2*C*C*K) * 4 = (200 + 160) * 4 bytes.
    assert bench.op_cost("tcn_block(relu)", tokens=10, channels=4, segments=3) == (4800, 1440)
    # gated, H = C: 3 * 2*T*2H*C*K + 3 * 2*T*H*C = 9600 + 960; weights 2H*C*K + C*H = 176, twice.
    assert bench.op_cost("tcn_block(gated)", tokens=10, channels=4, segments=3) == (10560, (200 + 2 * 176) * 4)
    # mean: T*C adds + T*C scales; 2 * (T*C + N*C) * 4 value bytes + 2 * (N+1) * 8 offset bytes.
    assert bench.op_cost("segment_reduce(mean)", tokens=10, channels=4, segments=3) == (80, 416 + 64)
    assert bench.op_cost("tcn_block(relu)", tokens=10, channels=4, segments=3, element_size=2)[1] == 720
    with pytest.raises(ValueError, match="op must be one of"):
        bench.op_cost("conv", tokens=10, channels=4, segments=3)


def test_roofline_bound_is_the_slower_of_compute_and_traffic():
    roof = bench.Roofline("test", "fp32", peak_flops=1e12, bandwidth=1e9, flops_source="x", bandwidth_source="y")
    assert roof.bound_s(2e12, 1e6) == pytest.approx(2.0)  # compute bound
    assert roof.bound_s(1e6, 3e9) == pytest.approx(3.0)  # bandwidth bound


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [("NVIDIA H100 80GB HBM3", "fp32", 494.7), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H200", "fp16", 989.4),
     ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("Tesla T4", "fp32", None)],
)  # fmt: skip
def test_gpu_peak_table(name, dtype, tflops):
    assert bench.gpu_peak_tflops(name, dtype) == tflops


def test_cpu_roofline_is_measured():
    roof = bench.device_roofline(CPU)
    assert roof.peak_flops > 1e6 and roof.bandwidth > 1e6
    assert roof.flops_source.startswith("measured") and roof.bandwidth_source.startswith("measured")


def test_epoch_estimate_measured_and_projected():
    seconds, tokens = [5.0, 1.0, 1.0], [10, 10, 10]
    done = bench.epoch_estimate(seconds, tokens, epoch_tokens=30, finished=True, warmup_steps=1)
    assert done == {"epoch_s": 7.0, "projected": False, "interactions_per_s": 30 / 7, "steps": 3, "measured_s": 7.0}
    # Unfinished: steady state 10 tokens/s after 1 warm-up step; 70 tokens left -> 7 + 7 s.
    cut = bench.epoch_estimate(seconds, tokens, epoch_tokens=100, finished=False, warmup_steps=1)
    assert cut["projected"] and cut["epoch_s"] == pytest.approx(14.0) and cut["measured_s"] == 7.0
    assert cut["interactions_per_s"] == pytest.approx(100 / 14)
    few = bench.epoch_estimate([2.0], [10], epoch_tokens=100, finished=False, warmup_steps=3)  # all steps count
    assert few["interactions_per_s"] == pytest.approx(5.0) and few["epoch_s"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="step_seconds"):
        bench.epoch_estimate([], [], epoch_tokens=1, finished=True, warmup_steps=0)


def test_epoch_estimate_finished_epoch_is_its_measured_rate():
    # 4 steps, 3 of them warm-up: the rate is the epoch's, not its tiny last batch's.
    est = bench.epoch_estimate([0.2, 0.1, 0.1, 0.1], [1000, 1000, 900, 100], epoch_tokens=3000, finished=True,
                               warmup_steps=3)  # fmt: skip
    assert est["epoch_s"] == pytest.approx(0.5) and est["interactions_per_s"] == pytest.approx(6000)


def test_epoch_estimate_projection_needs_steps_beyond_warmup():
    # 1 step after 3 warm-up steps is not a steady state: project from all 4 (40 tokens in 6 s).
    short = bench.epoch_estimate([3.0, 1.0, 1.0, 1.0], [10] * 4, epoch_tokens=100, finished=False, warmup_steps=3)
    assert short["epoch_s"] == pytest.approx(6.0 + 60 / (40 / 6)) and short["interactions_per_s"] == pytest.approx(
        100 / 15)  # fmt: skip
    # 4 steps after 3 warm-up steps: 10 tokens/s for the 30 tokens left after 11 s.
    long = bench.epoch_estimate([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [10] * 7, epoch_tokens=100, finished=False,
                                warmup_steps=3)  # fmt: skip
    assert long["epoch_s"] == pytest.approx(14.0) and long["interactions_per_s"] == pytest.approx(100 / 14)


def test_scaling_speedup_compares_whole_epochs():
    # The reported case: same 3,000-interaction epoch, HierTCN in 4 steps / 0.5 s, GRU4Rec in 2 steps / 1.0 s.
    hier = bench.epoch_estimate([0.2, 0.1, 0.1, 0.1], [1000, 1000, 900, 100], epoch_tokens=3000, finished=True,
                                warmup_steps=3)  # fmt: skip
    gru = bench.epoch_estimate([0.5, 0.5], [1500, 1500], epoch_tokens=3000, finished=True, warmup_steps=3)
    rows = [{"size": 3000, "model": "hiertcn", **hier}, {"size": 3000, "model": "gru4rec", **gru}]
    assert bench.speedups(rows) == {3000: pytest.approx(2.0)}
    # One finished, one projected: still the ratio of (measured or projected) epoch times.
    slow = bench.epoch_estimate([1.0] * 8, [100] * 8, epoch_tokens=3000, finished=False, warmup_steps=3)
    rows[1] = {"size": 3000, "model": "gru4rec", **slow}
    assert bench.speedups(rows) == {3000: pytest.approx(slow["epoch_s"] / 0.5)}


@pytest.mark.parametrize("model", ["hiertcn", "gru4rec"])
def test_train_within_budget_flags_projected_epochs(tmp_path, model):
    split_last_session(planted_dataset(n_users=300).csr).save(tmp_path / "dataset")  # several batches per epoch
    whole = bench.train_within_budget(str(tmp_path / "dataset"), model, budget_s=1e9)
    assert not whole["projected"] and whole["steps"] == whole["batches_per_epoch"] > 1
    assert whole["epoch_s"] == whole["measured_s"] > 0 and whole["interactions_per_s"] > 0
    cut = bench.train_within_budget(str(tmp_path / "dataset"), model, budget_s=1e-9)
    assert cut["projected"] and cut["steps"] == 1 < cut["batches_per_epoch"]
    assert cut["epoch_s"] == pytest.approx(cut["epoch_interactions"] / cut["interactions_per_s"])
    assert cut["epoch_interactions"] == whole["epoch_interactions"]


def test_scaling_end_to_end(tmp_path, capsys):
    out = tmp_path / "scaling"
    argv = ["bench", "--scaling", "--sizes", "800,1600", "--budget", "0.5", "--threads", "1", "--out", str(out),
            "--quiet", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((out / "scaling.json").read_text())
    assert [(r["size"], r["model"]) for r in result["scaling"]] == [
        (800, "hiertcn"), (800, "gru4rec"), (1600, "hiertcn"), (1600, "gru4rec")]  # fmt: skip
    for row in result["scaling"]:
        assert row["projected"] == (row["steps"] < row["batches_per_epoch"])
        assert 0.5 * row["size"] < row["interactions"] < 2 * row["size"]  # sized by the pilot's rows per user
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("epoch_s", "interactions_per_s", "prepare_s"))
        assert row["memory_method"] == "peak_rss_growth" and row["peak_bytes"] >= 0
    assert set(result["speedup_vs_gru4rec"]) == {"800", "1600"}
    assert (out / "scaling.png").stat().st_size > 0


@pytest.mark.parametrize("flag", [["--tokens", "0"], ["--sizes", "ten"], ["--history-lengths", ""]])
def test_bench_rejects_bad_lists(flag, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", *flag])
    assert flag[0] in capsys.readouterr().err


def test_run_bench_rejects_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype \(--dtype\) must be one of"):
        bench.run_bench(None, None, models=["hiertcn"], tokens=[64], channels=8, history_lengths=[10], repeats=1,
                        dtype="fp64")  # fmt: skip


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [("--channels", {"channels": 0}), ("--channels", {"channels": -2}), ("--steps", {"repeats": 0}),
     ("--tokens", {"tokens": [64, 0]}), ("--tokens", {"tokens": []}), ("--history-lengths", {"history_lengths": [-1]})],
)  # fmt: skip
def test_run_bench_rejects_bad_numbers_before_running(option, kwargs):
    options = {"models": ["hiertcn"], "tokens": [64], "channels": 8, "history_lengths": [10], "repeats": 1, **kwargs}
    with pytest.raises(ValueError, match=f"\\({option}\\) must be"):
        bench.run_bench(None, None, **options)  # None dataset/config: nothing may run before the checks


@pytest.mark.parametrize("channels", [0, -2])
def test_kernel_case_rejects_bad_channels(channels):
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        bench.kernel_case(bench.KERNEL_OPS[0], 64, channels, CPU, torch.float32)


@pytest.mark.parametrize(
    ("option", "budget", "sizes"),
    [("--budget", 0, [100]), ("--budget", -1, [100]), ("--budget", math.nan, [100]), ("--budget", math.inf, [100]),
     ("--sizes", 1.0, []), ("--sizes", 1.0, [100, 0])],
)  # fmt: skip
def test_scaling_study_rejects_bad_budget_and_sizes(option, budget, sizes, tmp_path):
    with pytest.raises(ValueError, match=f"\\({option}\\) must be"):
        bench.scaling_study(sizes, ["hiertcn"], budget_s=budget, work_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # checked before any log was written


@pytest.mark.parametrize("argv", [["--scaling", "--budget", "nan"], ["--scaling", "--budget", "0"]])
def test_bench_cli_bad_budget_is_a_one_line_error(argv, tmp_path, capsys):
    assert cli.main(["bench", *argv, "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertcn bench: error: budget_s (--budget) must be") and "\n" not in err


@pytest.mark.parametrize("op", bench.KERNEL_OPS)
def test_kernel_case_rotates_input_copies_of_small_shapes(op):
    case = bench.kernel_case(op, 64, 8, CPU, torch.float32)
    assert case.candidate == "reference" and case.baseline in ("padded F.conv1d", "torch.segment_reduce")
    assert case.copies == bench.MAX_INPUT_COPIES  # 64 x 8 floats are far below ROTATE_BYTES
    assert 0 < case.tokens <= 64 and all(x.shape == (case.tokens, 8) for x in case.inputs[: case.copies])
    assert not any(torch.equal(case.inputs[0], x) for x in case.inputs[1 : case.copies])  # distinct copies
    for fn in case.impls.values():
        for _ in range(case.copies + 1):  # every copy, then around again
            fn()
    big = bench.kernel_case(op, bench.ROTATE_BYTES // 4 // 8 + 40, 8, CPU, torch.float32)
    assert big.copies == 1
