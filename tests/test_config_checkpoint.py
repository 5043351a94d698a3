import json
import math
import os
import stat

import pytest
import torch

from hiertcn.checkpoint import CheckpointError, atomic_file, load_checkpoint, save_checkpoint, write_json
from hiertcn.config import Config, load_config


def test_file_then_flags_override_defaults(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 7\nlr = 0.01\nmodels = ["hiertcn", "gru4rec"]\n[model_config.hiertcn]\nlevels = 3\n')
    config = load_config(toml, {"lr": 0.5})
    assert (config.epochs, config.lr, config.models) == (7, 0.5, ["hiertcn", "gru4rec"])
    assert config.model_config == {"hiertcn": {"levels": 3}}
    assert config.n_queues == Config().n_queues

    yaml = tmp_path / "run.yaml"
    yaml.write_text("epochs: 2\nsplit: user\n")
    assert (load_config(yaml).epochs, load_config(yaml).split) == (2, "user")


@pytest.mark.parametrize("suffix, text", [(".toml", "epoch = 3\n"), (".yml", "epoch: 3\n")])
def test_unknown_keys_are_named(tmp_path, suffix, text):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match="unknown key.*'epoch'.*valid keys: .*epochs"):
        load_config(path)


@pytest.mark.parametrize("suffix, text", [(".toml", "epochs = = 3\n"), (".yaml", "epochs: [3\n")])
def test_a_syntax_error_names_the_file(tmp_path, suffix, text):
    """A ValueError naming the file (YAML's own error is no ValueError: it escaped the CLI as a traceback)."""
    path = tmp_path / f"broken{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"config file {path}: "):
        load_config(path)


def test_bad_values_and_files():
    with pytest.raises(ValueError, match="split"):
        Config(split="random")
    with pytest.raises(ValueError, match="epochs"):
        Config(epochs=0)
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        Config(precision="fp16")
    for bad in ({"lr_decay": 0.0}, {"lr_decay": 1.5}, {"weight_decay": -1.0}, {"clip_norm": -1.0}, {"seed": -1},
                {"session_gap": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Config(**bad)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config("nope.toml")
    with pytest.raises(ValueError, match="model_config"):
        Config.from_dict({"model_config": {"hiertcn": 3}})
    assert Config(models="hiertcn, gru4rec").models == ["hiertcn", "gru4rec"]


def test_an_unset_session_gap_is_1800_s_or_none_with_a_session_column(tmp_path):
    from hiertcn.data.prepare import resolve_session_gap

    assert Config().session_gap is None and resolve_session_gap(None, None) == 1800
    assert resolve_session_gap(None, "sid") is None and resolve_session_gap(600, "sid") == 600
    # A checkpoint's or file's session_gap = 1800 (older runs store it) stays explicit: cut at gaps too.
    assert Config.from_dict(Config(session_col="sid", session_gap=1800).to_dict()).session_gap == 1800
    (tmp_path / "gap.yaml").write_text("session_gap: null\n")
    assert load_config(tmp_path / "gap.yaml").session_gap is None


def test_values_of_the_wrong_type_are_named(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as a string: a float given as text is taken; other mismatches are named.
    yaml = tmp_path / "run.yaml"
    yaml.write_text("lr: 1e-3\nepochs: 4.0\nmax_time: 60\n")
    config = load_config(yaml)
    assert (config.lr, config.epochs, config.max_time) == (0.001, 4, 60.0)
    assert isinstance(config.epochs, int) and isinstance(config.max_time, float)
    for text, match in (("epochs: 2.5\n", "epochs in .*run.yaml must be int, got 2.5"),
                        ("lr: fast\n", "lr in .* must be float, got 'fast'"),
                        ("validate: 'no'\n", "validate in .* must be bool"),
                        ("data: 3\n", "data in .* must be str or none, got 3"),
                        ("patience: true\n", "patience in .* must be int, got True"),
                        ("models: [1]\n", "models in .* must be list or none, got \\[1\\]"),
                        ("max_time: .nan\n", "max_time must be a finite number, got nan"),
                        ("lr: .inf\n", "lr must be a finite number, got inf"),
                        ("clip_norm: .inf\n", "clip_norm must be a finite number, got inf"),
                        ("seed: 4294967296\n", "seed must be below 2\\*\\*32"),
                        ("model_config:\n  hirtcn: {levels: 3}\n", "unknown model\\(s\\) 'hirtcn'")):  # fmt: skip
        yaml.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_config(yaml)


def test_checkpoint_round_trip_is_atomic(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind



def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"mrr": 0.25})
    with pytest.raises(KeyboardInterrupt), atomic_file(path, "w") as f:
        f.write('{"mrr": 0.')
        raise KeyboardInterrupt  # killed mid-write
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(path, {"mrr": math.nan}, allow_nan=False)
    assert json.loads(path.read_text()) == {"mrr": 0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_run_files_get_the_mode_open_gives(tmp_path):
    old = os.umask(0o022)
    try:
        for path in (save_checkpoint(tmp_path / "last.pt", {"model": {}}), write_json(tmp_path / "m.json", {})):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600: others may read a run
    finally:
        os.umask(old)

def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(corrupt, {"model": {f"w{i}": torch.randn(2000) for i in range(4)}})
    whole = corrupt.read_bytes()
    for cut in (200, 5000, len(whole) - 100):  # torch answers some cuts with OSError (EINVAL), not a parse error
        corrupt.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(corrupt)
    save_checkpoint(tmp_path / "run" / "best.pt", {})
    with pytest.raises(IsADirectoryError, match=r"is a folder; pass one of its checkpoints: .*run/best\.pt"):
        load_checkpoint(tmp_path / "run")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a hiertcn checkpoint"):
        load_checkpoint(foreign)
    old = tmp_path / "old.pt"
    save_checkpoint(old, {"format_version": 0})
    with pytest.raises(CheckpointError, match="format version 0"):
        load_checkpoint(old)
