"""The CLI on a tiny planted dataset (the data pipeline itself is tested in tests/data)."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hiertcn import cli
from hiertcn.train import epoch_label
from tests.test_train import planted_dataset

SMALL_MODELS = """
[model_config.hiertcn]
embedding_dim = 8
hidden_dim = 8
channels = 8
levels = 2
[model_config.gru4rec]
embedding_dim = 8
hidden_dim = 8
[model_config.moving_average]
embedding_dim = 8
"""


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    data = planted_dataset(n_users=20)
    monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print: (data, tmp_path / "cache"))
    config = tmp_path / "small.toml"
    config.write_text("n_queues = 4\nlr = 0.02\nbatch_users = 8\n" + SMALL_MODELS)
    return config


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_writes_metrics_and_prints_them_last(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    # short windows: evaluate must cut sessions as training did (it reads max_session_len from the checkpoint)
    code = cli.main(["train", "--config", str(tiny), "--out", str(out), "--epochs", "2", "--quiet", "--json",
                     "--max-session-len", "3"])  # fmt: skip
    assert code == 0
    printed = last_json(capsys)
    assert printed == json.loads((out / "metrics.json").read_text())
    assert {"recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrr@20", "mrp"} <= set(printed)
    assert printed["epochs"] == 2 and printed["interactions_per_s"] > 0
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()

    # --resume on a finished run trains nothing more and reports the same result.
    assert cli.main(["train", "--config", str(tiny), "--out", str(out), "--epochs", "2", "--quiet", "--json",
                     "--resume"]) == 0  # fmt: skip
    again = last_json(capsys)
    assert (again["mrr"], again["steps"]) == (printed["mrr"], printed["steps"])

    # evaluate and recommend read the checkpoint back
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--json", "--out", str(tmp_path / "ev")]) == 0
    assert last_json(capsys)["mrr"] == printed["mrr"]
    assert cli.main(["recommend", "--checkpoint", str(out / "best.pt"), "--users", "0,3", "-k", "3", "--json"]) == 0
    recs = last_json(capsys)
    assert list(recs) == ["0", "3"] and all(len(r) == 3 for r in recs.values())


def test_compare_prints_a_table_and_writes_plots(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    models = "hiertcn,moving_average,gru4rec"
    code = cli.main(["compare", "--config", str(tiny), "--models", models, "--out", str(out), "--epochs", "1",
                     "--quiet", "--json"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert list(metrics) == models.split(",")
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert "inter/s" in captured.err and "moving_average" in captured.err and "mrr first" in captured.err
    assert all(0 <= m["first/mrr"] <= 1 and m["n_first"] + m["n_later"] == m["n_events"] for m in metrics.values())
    for png in ("training_curves.png", "metrics.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "{bad_key}"], "unknown key(s) 'epoch'"),
        (["train", "--config", "{bad_model_key}"], "model_config.hiertcn"),
        (["compare", "--models", "hiertcn,sasrec"], "unknown model(s) sasrec"),
        (["evaluate", "--checkpoint", "{missing}"], "does not exist"),
        (["evaluate", "--checkpoint", "{corrupt}"], "corrupt"),
        (["recommend", "--checkpoint", "{weights}", "--users", "999"], "unknown user id(s) 999"),
        (["compare", "--models", "gru4rec,gru4rec"], "gru4rec listed more than once"),
        (["train", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["train", "--resume", "--out", "{missing}"], "there is no"),
        (["train", "--config", "{typo_model}"], "unknown model(s) 'hirtcn'"),
        (["train", "--model", "sasrec"], "model must be one of"),
        (["compare", "--loss", "nce"], "loss must be one of"),
        (["train", "--out", "{under_a_file}"], "cannot create the folder"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tiny, tmp_path, capsys, argv, message):
    (tmp_path / "bad.toml").write_text("epoch = 3\n")
    (tmp_path / "bad_model.toml").write_text("[model_config.hiertcn]\nlayers = 3\n")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "typo.toml").write_text("[model_config.hirtcn]\nlevels = 3\n")
    if "{weights}" in argv:
        cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"])
    paths = {"bad_key": tmp_path / "bad.toml", "bad_model_key": tmp_path / "bad_model.toml",
             "missing": tmp_path / "nope.pt", "corrupt": tmp_path / "corrupt.pt", "weights": tmp_path / "w/best.pt",
             "typo_model": tmp_path / "typo.toml", "under_a_file": tmp_path / "corrupt.pt" / "run"}
    argv = [a.format(**paths) for a in argv] + ["--out", str(tmp_path / "o")] * ("--out" not in argv)
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_every_model_trains_in_bf16_and_scores_like_in_fp32(tiny, tmp_path, capsys, device):
    results = {}
    for precision in ("fp32", "bf16"):
        assert cli.main(["compare", "--config", str(tiny), "--out", str(tmp_path / precision), "--epochs", "2",
                         "--device", device, "--precision", precision, "--quiet", "--json"]) == 0  # fmt: skip
        results[precision] = last_json(capsys)
    assert set(results["bf16"]) == set(results["fp32"]) and len(results["bf16"]) == 5
    for name, metrics in results["bf16"].items():  # 20 users: the two precisions rank alike, not to the digit
        assert abs(metrics["mrr"] - results["fp32"][name]["mrr"]) < 0.05, name


def test_resume_continues_only_the_same_run(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(tiny), "--out", str(out), "--quiet", "--json"]
    assert cli.main([*argv, "--epochs", "1", "--lr", "0.01"]) == 0
    capsys.readouterr()
    # What shaped the saved weights and optimiser cannot change: the lr would be the checkpoint's anyway.
    assert cli.main([*argv, "--resume", "--epochs", "2", "--lr", "0.5", "--lr-decay", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "lr 0.5 (the run's: 0.01)" in err and "lr_decay 0.5 (the run's: 1.0)" in err
    assert cli.main([*argv, "--resume", "--epochs", "2", "--model", "gru4rec"]) == 2
    assert "model 'gru4rec' (the run's: 'hiertcn')" in capsys.readouterr().err
    # When it stops may change; what is not given comes from the run.
    assert cli.main(["train", "--out", str(out), "--quiet", "--json", "--resume", "--epochs", "2", "--max-time",
                     "100"]) == 0  # fmt: skip
    assert last_json(capsys)["epochs"] == 2


def test_a_run_from_before_the_release_agg_resumes(tiny, tmp_path, capsys):
    """A last.pt written when HierTCN's AGG had a dense layer by default (no agg_dense option saved)."""
    import torch

    out = tmp_path / "run"
    config = tiny.read_text().replace("levels = 2", 'levels = 2\nagg_dense = "separate"')
    (tmp_path / "old.toml").write_text(config)
    argv = ["train", "--out", str(out), "--quiet", "--json"]
    assert cli.main([*argv, "--config", str(tmp_path / "old.toml"), "--epochs", "1"]) == 0
    last = torch.load(out / "last.pt", weights_only=False)
    del last["model_config"]["agg_dense"], last["config"]["model_config"]["hiertcn"]["agg_dense"]
    torch.save(last, out / "last.pt")
    capsys.readouterr()
    assert cli.main([*argv, "--resume", "--epochs", "2"]) == 0
    assert last_json(capsys)["epochs"] == 2


def test_a_resume_with_its_time_spent_trains_nothing_more(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(tiny), "--out", str(out), "--epochs", "5"]
    assert cli.main([*argv, "--max-time", "1e-6", "--json"]) == 0
    assert "stopped at max_time" in capsys.readouterr().err  # (--json sends the lines for people to stderr)
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert cli.main([*argv, "--resume", "--max-time", "1e-6", "--json"]) == 0
    assert last_json(capsys)["steps"] == steps  # not one more batch


def test_data_paths_are_stored_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = cli.config_from_args(cli.build_parser().parse_args(
        ["train", "--data", "logs/x.csv", "--cache-dir", "~/c", "--impressions", "imp.csv"]))  # fmt: skip
    assert config.data == str(tmp_path / "logs/x.csv") and config.impressions == str(tmp_path / "imp.csv")
    assert config.cache_dir == str(Path("~/c").expanduser())
    keep = cli.config_from_args(cli.build_parser().parse_args(["train", "--impressions", "none"]))
    assert keep.impressions == "none" and keep.data is None


def test_train_refuses_a_split_without_test_sessions_before_training(tmp_path, monkeypatch, capsys):
    data = planted_dataset(n_users=6)
    no_test = dataclasses.replace(data, role=np.where(data.role == 2, 0, data.role).astype(np.int8))
    monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print: (no_test, tmp_path / "cache"))
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "the dataset has no TEST sessions" in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.pt").exists()
    # The hint is about the split in use, by its --split name (prepare_dataset's info) or split_*'s.
    for split, hint in (("user", "the user split deals whole users out"), ("time", "the time split cuts at"),
                        ("last-session", "the last-session split holds out"),
                        ("last_session", "the last-session split holds out")):  # fmt: skip
        other = dataclasses.replace(no_test, info={**no_test.info, "split": split})
        monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print, d=other: (d, tmp_path / "cache"))
        assert cli.main(["train", "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert hint in err and "check the split options" not in err and "last_session" not in err.split(";")[-1]
    assert cli.main(["prepare", "--quiet"]) == 0
    assert "warning: no test sessions" in capsys.readouterr().err


def test_nan_loss_exits_2_and_keeps_the_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "nan"
    config = tmp_path / "nan.toml"  # short lanes: several steps before the first validation
    config.write_text("sessions_per_lane = 2\n" + tiny.read_text())
    code = cli.main(["train", "--config", str(config), "--out", str(out), "--lr", "1e30", "--epochs", "3",
                     "--checkpoint-every", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "loss is nan" in err or "loss is inf" in err
    assert "last good checkpoint" in err and (out / "last.pt").is_file()


def test_end_to_end_on_a_tiny_synthetic_xing_log(tmp_path, capsys):
    from hiertcn.data.synthetic import generate_xing

    log = generate_xing(tmp_path / "xing", n_users=120, n_items=80, seed=1).interactions
    config = tmp_path / "small.yaml"
    config.write_text("n_queues: 4\nmodel_config:\n  hiertcn: {embedding_dim: 8, hidden_dim: 8, channels: 8, levels: 2}\n")
    data = ["--data", str(log), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(["prepare", *data, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["test_sessions"] > 0 and summary["interactions"] > 0
    # what the preset and the split removed is shown, and adds up to what is left
    report = summary["preset_report"]
    assert report["preset"] == "hiertcn-xing" and report["removed"]["items with < 50 interactions"]["items"] > 0
    assert report["after"]["interactions"] - summary["dropped_interactions"] == summary["interactions"]
    assert "- items with < 50 interactions" in captured.err and summary["skipped_rows"] == 0
    out = tmp_path / "train"
    argv = ["train", *data, "--config", str(config), "--out", str(out), "--epochs", "1", "--quiet", "--json"]
    assert cli.main(argv + ["--seed", "3"]) == 0
    first = last_json(capsys)
    assert first["n_events"] > 0 and 0 < first["mrr"] <= 1
    assert cli.main(argv + ["--seed", "3", "--out", str(tmp_path / "again")]) == 0
    assert last_json(capsys)["mrr"] == first["mrr"]  # --seed repeats a CPU run exactly


@pytest.mark.parametrize("out_from", ["flag", "config"])
def test_tiny_demo_runs_the_whole_job(tmp_path, capsys, monkeypatch, out_from):
    monkeypatch.chdir(tmp_path)  # nothing may land in the default folder
    out = tmp_path / "demo"
    (tmp_path / "demo.toml").write_text(f'out = "{out}"\n')
    where = ["--out", str(out)] if out_from == "flag" else ["--config", str(tmp_path / "demo.toml")]
    assert cli.main(["demo", "--tiny", "--quiet", "--models", "hiertcn,moving_average", *where, "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert list(metrics) == ["hiertcn", "moving_average"] and all(m["n_events"] > 0 for m in metrics.values())
    for name in ("data/interactions.csv", "metrics.json", "training_curves.png", "metrics.png", "hiertcn/best.pt"):
        assert (out / name).is_file(), name
    assert str(out / "metrics.json") in captured.err  # it says where everything went
    assert not (tmp_path / "hiertcn-demo").exists()


def test_bench_times_models_and_kernel_ops(tiny, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--config", str(tiny), "--models", "hiertcn,moving_average", "--steps", "1", "--tokens", "64,128",
            "--channels", "8", "--history-lengths", "20,40", "--out", str(out), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    result = last_json(capsys)
    assert result == json.loads((out / "bench.json").read_text())
    assert set(result["models"]) == {"hiertcn", "moving_average", "gru4rec"}  # the baseline always runs
    assert all(row["step_ms"] > 0 and row["interactions_per_s"] > 0 for row in result["models"].values())
    assert result["models"]["gru4rec"]["speedup_vs_gru4rec"] == 1.0
    assert {row["op"] for row in result["kernels"]} == {"tcn_block(relu)", "tcn_block(gated)", "segment_reduce(mean)"}
    candidates = [row for row in result["kernels"] if row["role"] == "candidate"]
    assert len(candidates) == 3 * 2
    assert all(0 < row["tokens"] <= t for row, t in zip(candidates, [64] * 3 + [128] * 3, strict=True))
    for row in candidates:
        assert 0 < row["ratio"] < float("inf") and row["gbps"] > 0 and row["tflops"] > 0
        assert 0 < row["roofline_pct"] and row["roofline_ms"] > 0
    assert [row["history"] for row in result["memory_vs_history"]] == [20, 40]
    assert all(0 < row["ratio"] < float("inf") for row in result["memory_vs_history"])
    assert result["device"]["roofline"]["peak_flops"] > 0 and result["device"]["roofline"]["bandwidth"] > 0
    assert result["command"].startswith("hiertcn bench ") and "--tokens 64,128" in result["command"]
    assert (out / "time_vs_tokens.png").stat().st_size > 0 and (out / "memory_vs_history.png").stat().st_size > 0


def test_version_names_the_stack(capsys):
    import torch

    from hiertcn import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"hiertcn {__version__} (torch {torch.__version__}, ")


def test_optimiser_flags_reach_the_config():
    args = cli.build_parser().parse_args(["train", "--lr-decay", "0.5", "--weight-decay", "1e-4", "--precision", "bf16"])
    config = cli.config_from_args(args)
    assert (config.lr_decay, config.weight_decay, config.precision) == (0.5, 1e-4, "bf16")
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])).precision == "fp32"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--precision", "fp16"])
    with pytest.raises(ValueError, match="lr_decay"):
        cli.config_from_args(cli.build_parser().parse_args(["train", "--lr-decay", "2"]))


def test_recommend_speaks_the_raw_string_ids_of_the_log(tmp_path, capsys):
    # A CSV with string ids goes through the real reader and cache: --users takes the
    # log's own ids and the recommendations are its own item ids, not internal codes.
    times = [100 * t + 4000 * (t // 4) for t in range(12)]  # three sessions of four per user
    rows = ["user,item,ts"] + [f"ann,shoe_{t % 3},{ts}" for t, ts in enumerate(times)]
    rows += [f"bo,hat_{t % 4},{ts}" for t, ts in enumerate(times)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    data = ["--data", str(tmp_path / "log.csv"), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    (tmp_path / "small.toml").write_text(SMALL_MODELS)
    assert cli.main(["train", *data, "--config", str(tmp_path / "small.toml"), "--epochs", "1", "--quiet",
                     "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    weights = ["--checkpoint", str(tmp_path / "run" / "best.pt")]
    assert cli.main(["recommend", *data, *weights, "--users", "bo,ann", "-k", "7", "--json"]) == 0
    recs = last_json(capsys)
    assert list(recs) == ["bo", "ann"]
    catalogue = {f"shoe_{i}" for i in range(3)} | {f"hat_{i}" for i in range(4)}
    assert all(set(r) == catalogue for r in recs.values())  # k = every item: each raw id once

    assert cli.main(["recommend", *data, *weights, "--users", "bo,ann", "-k", "3", "--exclude-seen", "--json"]) == 0
    unseen = last_json(capsys)  # ann saw every shoe, bo every hat
    assert set(unseen["bo"]) == {f"shoe_{i}" for i in range(3)} and set(unseen["ann"]) < {f"hat_{i}" for i in range(4)}
    # k past the unseen items: the lists stop there (seen items are not recommendations), everywhere
    assert cli.main(["recommend", *data, *weights, "--users", "bo,ann", "-k", "7", "--exclude-seen", "--json"]) == 0
    captured = capsys.readouterr()
    unseen = json.loads(captured.out.strip().splitlines()[-1])
    assert sorted(unseen["bo"]) == [f"shoe_{i}" for i in range(3)] and sorted(unseen["ann"]) == [f"hat_{i}" for i in range(4)]
    assert "2 user(s) have fewer than 7 unseen items" in captured.err
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"unseen.{suffix}"
        assert cli.main(["recommend", *data, *weights, "-k", "7", "--exclude-seen", "--output", str(out), "--quiet"]) == 0
        if suffix == "csv":
            table = list(csv.DictReader(out.open()))
            ranks = {u: [int(r["rank"]) for r in table if r["user"] == u] for u in ("ann", "bo")}
            assert ranks == {"ann": [1, 2, 3, 4], "bo": [1, 2, 3]}
            assert all(math.isfinite(float(r["score"])) for r in table)
        else:
            lines = {line["user"]: line for line in map(json.loads, out.read_text().splitlines())}
            assert {u: sorted(line["items"]) for u, line in lines.items()} == {u: sorted(v) for u, v in unseen.items()}
            assert all(None not in line["scores"] for line in lines.values())

    assert cli.main(["recommend", *data, *weights, "--users", "bo,cy"]) == 2
    assert "unknown user id(s) cy" in capsys.readouterr().err
    # the file speaks them too
    assert cli.main(["recommend", *data, *weights, "-k", "7", "--output", str(tmp_path / "recs.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "recs.jsonl").read_text().splitlines()]
    assert {line["user"]: line["items"] for line in lines} == recs


def test_prepare_says_when_held_out_interactions_are_removed(tmp_path, capsys):
    """An item seen only in a test session is removed from it; the summary says so even when no session goes."""
    rows = ["user,item,ts"] + [f"{u},{(u + t) % 5},{100 * t + 4000 * (t // 3)}" for u in range(4) for t in range(9)]
    rows[-1] = "3,99,8800"  # user 3's test session: 2 known items and item 99, unseen in training
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    argv = ["prepare", "--data", str(tmp_path / "log.csv"), "--user-col", "user", "--item-col", "item", "--time-col",
            "ts", "--cache-dir", str(tmp_path / "cache"), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["dropped_interactions"], summary["dropped_sessions"]) == (1, 0)
    assert "removed 1 held-out interactions: items unseen in training, and 0 held-out sessions" in captured.err


def test_prepare_skips_bad_rows_when_asked(tmp_path, capsys):
    rows = ["user,item,ts"] + [f"{u},{(u + t) % 5},{100 * t + 4000 * (t // 3)}" for u in range(4) for t in range(9)]
    rows.insert(7, "3,oops,not-a-time")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    argv = ["prepare", "--data", str(tmp_path / "log.csv"), "--user-col", "user", "--item-col", "item", "--time-col",
            "ts", "--cache-dir", str(tmp_path / "cache"), "--json"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--skip-bad-rows" in capsys.readouterr().err
    assert cli.main([*argv, "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["interactions"] == 36 and summary["skipped_rows"] == 1
    assert "skipped 1 bad row(s) of the log (--skip-bad-rows); lines 8" in captured.err  # said, not only in JSON


def test_reader_warnings_are_one_line_of_the_command(tmp_path, capsys):
    """A stray non-integer id warns as `hiertcn prepare: warning: ...`, not Python's file:line dump."""
    rows = ["user,item,ts"] + [f"{u},{(u + t) % 5},{100 * t}" for u in range(30) for t in range(4)]
    rows[11] = "2,abc,300"
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    assert cli.main(["prepare", "--data", str(tmp_path / "log.csv"), "--user-col", "user", "--item-col", "item",
                     "--time-col", "ts", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "hiertcn prepare: warning: " in err and "1 of 120 ids is not an integer (line 12: 'abc')" in err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_recommend_writes_every_user_to_a_file(tiny, tmp_path, capsys):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    weights = ["recommend", "--checkpoint", str(tmp_path / "w/best.pt"), "-k", "3", "--quiet"]
    assert cli.main([*weights, "--users", "4,0", "--json"]) == 0
    printed = last_json(capsys)
    assert cli.main([*weights, "--output", str(tmp_path / "recs.csv"), "--json"]) == 0
    assert last_json(capsys) == {"output": str(tmp_path / "recs.csv"), "users": 20, "k": 3}
    table = pacsv.read_csv(tmp_path / "recs.csv").to_pydict()
    assert table["user"] == [u for u in range(20) for _ in range(3)] and table["rank"] == [1, 2, 3] * 20
    for user in (0, 4):
        rows = slice(3 * user, 3 * user + 3)
        assert table["item"][rows] == printed[str(user)]
        assert table["score"][rows] == sorted(table["score"][rows], reverse=True)
    assert cli.main([*weights, "--users", "all", "--output", str(tmp_path / "recs.parquet")]) == 0
    parquet = pq.read_table(tmp_path / "recs.parquet").to_pydict()
    assert parquet["item"] == table["item"] and parquet["user"] == table["user"]
    assert cli.main([*weights, "--output", str(tmp_path / "recs.txt")]) == 2
    assert "must end in .csv, .parquet, .jsonl" in capsys.readouterr().err
    assert cli.main([*weights, "--output", str(tmp_path / "RECS.CSV")]) == 0  # the suffix in any case
    assert pacsv.read_csv(tmp_path / "RECS.CSV").to_pydict() == table


def test_recommend_on_integer_ids_rejects_a_non_integer_user(tiny, tmp_path, capsys):
    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    assert cli.main(["recommend", "--checkpoint", str(tmp_path / "w/best.pt"), "--users", "0,ann"]) == 2
    assert "integer user ids, got 'ann'" in capsys.readouterr().err


def test_recommend_at_a_request_time(tiny, tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    from hiertcn import recommend as module

    asked, real = [], module.recommend

    def spy(*args, **kw):
        asked.append((kw["at"], kw["session_gap"]))
        return real(*args, **kw)

    monkeypatch.setattr(module, "recommend", spy)
    weights = ["--checkpoint", str(tmp_path / "w/best.pt"), "--users", "0", "-k", "2", "--json"]
    for at, seconds in (("86400", 86400), ("1970-01-02", 86400), ("1970-01-02T01:00:00+01:00", 86400)):
        assert cli.main(["recommend", *weights, "--at", at]) == 0, capsys.readouterr().err
        assert asked[-1] == (seconds, 1800) and len(last_json(capsys)["0"]) == 2
    assert cli.main(["recommend", *weights, "--at", "now", "--session-gap", "60"]) == 0
    assert asked[-1][0] > 1_700_000_000 and asked[-1][1] == 60
    capsys.readouterr()
    # The log's own sessions, prepared without a gap: the request continues the last one, whatever the time.
    assert cli.main(["recommend", *weights, "--at", "86400", "--session-col", "sid"]) == 0
    assert asked[-1] == (86400, math.inf) and "--at continues each user's last session" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["recommend", *weights, "--at", "yesterday"])
    assert "expected unix seconds or ISO 8601, got 'yesterday', or 'now'" in capsys.readouterr().err
    assert cli.main(["recommend", *weights, "--at", "1"]) == 2  # the planted log's user 0 has later events
    # Named by raw user id and UTC time, not the internal row and raw seconds.
    assert "--at 1970-01-01T00:00:01Z is before the last interaction of 1 user(s) (user 0: 1970-01-01T02:13:34Z)" \
        in capsys.readouterr().err  # fmt: skip


def test_an_empty_model_list_is_an_error_not_every_model(tiny, tmp_path, capsys):
    (tmp_path / "none.toml").write_text("models = []\n" + tiny.read_text())
    for argv in (["compare", "--models", ""], ["compare", "--models", " , "], ["compare", "--config", "{none}"],
                 ["bench", "--models", ""]):  # fmt: skip
        argv = [a.format(none=tmp_path / "none.toml") for a in argv]
        assert cli.main([*argv, "--out", str(tmp_path / "o"), "--epochs", "1", "--quiet"]) == 2
        assert "--models names no model" in capsys.readouterr().err


def test_recommend_names_users_with_nothing_to_recommend_after(tiny, tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    data = planted_dataset(n_users=20)
    csr = data.csr
    with_empty = dataclasses.replace(data, csr=dataclasses.replace(
        csr, user_ptr=np.insert(csr.user_ptr, 0, 0), user_ids=np.arange(-1, 20)))  # fmt: skip: user -1 has no sessions
    monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print: (with_empty, tmp_path / "cache"))
    weights = ["--checkpoint", str(tmp_path / "w/best.pt")]
    assert cli.main(["recommend", *weights, "--users", "3,-1"]) == 2
    assert "no interactions to recommend after for user id(s) -1" in capsys.readouterr().err
    assert cli.main(["recommend", *weights, "-k", "2", "--json"]) == 0  # the default skips the empty user
    assert list(last_json(capsys)) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr", "hinge"])
def test_train_with_each_sampling_loss(tiny, tmp_path, capsys, loss):
    # fit hands these losses the TRAIN item counts (sampled_softmax refuses in-batch negatives without them)
    argv = ["train", "--config", str(tiny), "--out", str(tmp_path / loss), "--epochs", "1", "--quiet", "--json"]
    assert cli.main([*argv, "--loss", loss]) == 0
    assert 0 < last_json(capsys)["mrr"] <= 1


def test_a_checkpoint_trained_on_a_gpu_scores_on_a_cpu_machine(tiny, tmp_path, capsys):
    import torch

    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    best = tmp_path / "w" / "best.pt"
    payload = torch.load(best, weights_only=False)
    payload["config"]["device"] = "cuda"  # as `train --device cuda` on a GPU machine writes it
    torch.save(payload, best)
    assert cli.main(["evaluate", "--checkpoint", str(best), "--json", "--quiet"]) == 0
    assert cli.main(["recommend", "--checkpoint", str(best), "--users", "0", "--json", "--quiet"]) == 0
    if not torch.cuda.is_available():
        assert cli.main(["evaluate", "--checkpoint", str(best), "--device", "cuda"]) == 2  # asked for: named
        assert "no CUDA device" in capsys.readouterr().err


def test_evaluate_refuses_another_catalogue_of_the_same_size(tiny, tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    data = planted_dataset(n_users=20)
    other = dataclasses.replace(data, csr=dataclasses.replace(data.csr, item_ids=data.csr.item_ids + 100))
    monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print: (other, tmp_path / "cache"))
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "w/best.pt"), "--out", str(tmp_path / "ev")]) == 2
    assert "another catalogue of 12 items" in capsys.readouterr().err


def test_evaluate_notes_a_log_that_changed_since_training(tiny, tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--epochs", "1", "--quiet"]) == 0
    best = str(tmp_path / "w/best.pt")
    assert cli.main(["evaluate", "--checkpoint", best, "--out", str(tmp_path / "ev")]) == 0
    assert "differs from the one" not in "".join(capsys.readouterr())  # the same log: no note
    data = planted_dataset(n_users=20)
    later = dataclasses.replace(data, csr=dataclasses.replace(data.csr, timestamp=data.csr.timestamp + 60))
    monkeypatch.setattr(cli, "load_dataset", lambda config, echo=print: (later, tmp_path / "cache"))
    assert cli.main(["evaluate", "--checkpoint", best, "--out", str(tmp_path / "ev2")]) == 0
    assert "note: the log as prepared now differs from the one" in "".join(capsys.readouterr())


def test_loss_curve_smoothing_skips_non_finite_values():
    from hiertcn.plots import _smooth

    smoothed = _smooth([1.0, 1.0, float("nan")] + [1.0] * 30, window=5)
    assert smoothed[:2] == [1.0, 1.0] and smoothed[2:] == [1.0] * 31  # the NaN is left out, not carried forward
    assert math.isnan(_smooth([float("nan")], window=5)[0])


def test_compare_builds_every_model_before_training_any(tiny, tmp_path, capsys):
    """A bad option of the last model fails at once, not after the first ones have trained."""
    config = tmp_path / "tied.toml"
    config.write_text(tiny.read_text().replace("[model_config.gru4rec]\n", "[model_config.gru4rec]\ntied = true\n")
                      .replace("embedding_dim = 8\nhidden_dim = 8\n[model_config.moving_average]",
                               "embedding_dim = 8\nhidden_dim = 16\n[model_config.moving_average]"))  # fmt: skip
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--config", str(config), "--models", "hiertcn,gru4rec", "--out", str(out),
                     "--epochs", "1", "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "model_config.gru4rec: tied output embeddings need the user embedding size (16)" in err
    assert not (out / "hiertcn").exists()  # nothing trained


def test_train_says_each_epoch_and_which_weights_it_tested(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(tiny), "--out", str(out), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    history = json.loads((out / "history.json").read_text())["epochs"]
    best = max(history, key=lambda row: row["val_mrr"])
    for row in history:
        assert f"hiertcn epoch {epoch_label(row['epoch'])}: train loss {row['train_loss']:.4f}, valid mrr {row['val_mrr']:.4f}" \
            in captured.err  # fmt: skip
    assert captured.err.count("(best so far: best.pt)") == 1 + (history[1]["val_mrr"] > history[0]["val_mrr"])
    assert f"test metrics of epoch {epoch_label(best['epoch'])}'s weights (best validation mrr {best['val_mrr']:.4f}" \
        in captured.out  # fmt: skip


def test_epoch_label_rounds_a_stop_within_an_epoch():
    # Rounded down: a stop just before an epoch's end must not read as the whole epoch.
    assert [epoch_label(e) for e in (3, 3.0, 0.367537, 12.5, 0.996, 29 / 100)] == ["3", "3", "0.36", "12.50", "0.99",
                                                                                   "0.29"]  # fmt: skip


def test_json_output_has_no_nan(capsys, tmp_path):
    """``later/mrr`` of a split with no later event is NaN: JSON has none, strict parsers refuse it."""
    metrics = {"mrr": 0.5, "later/mrr": math.nan, "rows": [math.inf, 1.0]}

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    cli._finish(dataclasses.make_dataclass("Args", ["json"])(True), metrics)
    assert strict(capsys.readouterr().out) == {"mrr": 0.5, "later/mrr": None, "rows": [None, 1.0]}
    assert strict(cli.write_metrics(tmp_path, metrics).read_text())["later/mrr"] is None


def test_recommend_says_at_changes_nothing_for_a_model_without_sessions(tiny, tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(["train", "--config", str(tiny), "--model", "gru4rec", "--out", str(out), "--epochs", "1",
                     "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["recommend", "--checkpoint", str(out / "best.pt"), "--users", "0", "-k", "3", "--json"]
    assert cli.main([*argv, "--at", "now"]) == 0
    captured = capsys.readouterr()
    assert "gru4rec reads each history as one sequence, without sessions, so --at" in captured.err
    assert cli.main(argv) == 0
    assert json.loads(captured.out.strip().splitlines()[-1]) == last_json(capsys)
    assert cli.main([*argv, "--at", "1"]) == 2  # before the history: the error alone, no note
    err = capsys.readouterr().err
    assert "is before the last interaction" in err and "without sessions" not in err


def test_a_new_run_does_not_silently_replace_one_in_out(tiny, tmp_path, capsys):
    """Forgetting --resume after a kill must not discard the run: a second train into --out is refused."""
    out = tmp_path / "run"
    argv = ["train", "--config", str(tiny), "--out", str(out), "--epochs", "1", "--quiet"]
    assert cli.main(argv) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert cli.main([*argv, "--model", "gru4rec"]) == 2
    assert f"{out} already holds a run (last.pt): --resume continues it, --overwrite replaces it" in \
        capsys.readouterr().err  # fmt: skip
    assert (out / "last.pt").read_bytes() == before
    assert cli.main([*argv, "--model", "gru4rec", "--overwrite", "--json"]) == 0
    assert (out / "last.pt").read_bytes() != before

    cmp = ["compare", "--config", str(tiny), "--models", "moving_average", "--out", str(tmp_path / "c"),
           "--epochs", "1", "--quiet"]  # fmt: skip
    assert cli.main(cmp) == 0
    assert cli.main(cmp) == 2
    assert "moving_average already holds a run (last.pt): --overwrite replaces it" in capsys.readouterr().err
    assert cli.main([*cmp, "--overwrite"]) == 0
