"""Reader options on the command line and in config files: --time-unit, --sep by name, compressed --data."""

import gzip
import json

import pytest

from hiertcn import cli
from hiertcn.config import TIME_UNITS, Config, load_config
from hiertcn.data import pack_sessions, read_log, readers
from tests.data.test_prepare import COLUMNS, session_numbered_log


def _log_rows(scale: int) -> list[str]:
    # 4 users x 9 events, 100 s apart inside a session and 4000 s between sessions, in units of 1/scale s
    return ["user,item,ts"] + [
        f"{u},{(u + t) % 5},{(100 * t + 4000 * (t // 3)) * scale}" for u in range(4) for t in range(9)
    ]


def _prepare(tmp_path, capsys, data, *extra):
    argv = ["prepare", "--data", str(data), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--quiet", *extra]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_time_unit_reaches_the_reader_from_a_flag_and_a_config_file(tmp_path, capsys):
    # Millisecond times below 1e11 read as seconds by default: every gap passes 1800 s, so more sessions.
    (tmp_path / "log.csv").write_text("\n".join(_log_rows(1000)) + "\n")
    assert _prepare(tmp_path, capsys, tmp_path / "log.csv")["sessions"] > 12
    assert _prepare(tmp_path, capsys, tmp_path / "log.csv", "--time-unit", "ms")["sessions"] == 12
    (tmp_path / "ms.toml").write_text('time_unit = "ms"\n')
    assert _prepare(tmp_path, capsys, tmp_path / "log.csv", "--config", str(tmp_path / "ms.toml"))["sessions"] == 12
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--time-unit", "hours"])
    assert "--time-unit" in capsys.readouterr().err


def test_time_unit_config_key_is_checked():
    assert load_config(overrides={"time_unit": "us"}).time_unit == "us"
    with pytest.raises(ValueError, match="time_unit must be one of"):
        Config(time_unit="hours")
    assert TIME_UNITS == readers.TIME_UNITS  # the config's copy of the reader's units


def test_prepare_reads_a_gzipped_csv_and_a_tab_separator_by_name(tmp_path, capsys):
    with gzip.open(tmp_path / "log.csv.gz", "wt") as f:
        f.write("\n".join(_log_rows(1)) + "\n")
    summary = _prepare(tmp_path, capsys, tmp_path / "log.csv.gz")
    assert summary["interactions"] == 36 and summary["sessions"] == 12
    (tmp_path / "log.txt").write_text("\n".join(row.replace(",", "\t") for row in _log_rows(1)) + "\n")
    for sep in ("\\t", "tab"):  # '\t' typed in a shell is two characters
        assert _prepare(tmp_path, capsys, tmp_path / "log.txt", "--sep", sep)["interactions"] == 36


def test_column_names_name_a_headerless_log_from_a_flag_and_a_config_file(tmp_path, capsys):
    rows = _log_rows(1)[1:]  # no header line
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    argv = ["prepare", "--data", str(tmp_path / "log.csv"), "--cache-dir", str(tmp_path / "cache"), "--json", "--quiet"]
    assert cli.main(argv) == 2
    assert "looks like data, not a header" in capsys.readouterr().err
    assert cli.main([*argv, "--column-names", "user_id, item_id,timestamp"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["interactions"] == 36 and summary["sessions"] == 12  # the first row is data
    (tmp_path / "names.toml").write_text('column_names = ["u", "i", "t"]\nuser_col = "u"\nitem_col = "i"\n'
                                         'time_col = "t"\n')  # fmt: skip
    assert cli.main([*argv, "--config", str(tmp_path / "names.toml")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["interactions"] == 36
    assert load_config(overrides={"column_names": "a, b,c"}).column_names == ["a", "b", "c"]
    assert load_config(overrides={"column_names": " "}).column_names is None  # clears one from a config file
    assert cli.main([*argv, "--column-names", "user_id,item_id,timestamp,"]) == 2  # an error line, no traceback
    assert "no empty name" in capsys.readouterr().err


def test_a_prepared_log_keeps_its_cache_key_when_column_names_is_unset(tmp_path, monkeypatch):
    """The option is in the key only when given: datasets prepared before it existed are not rebuilt."""
    from hiertcn.data import prepare

    keys = []
    monkeypatch.setattr(prepare, "cache_key", lambda path, **params: keys.append(params) or "k")
    monkeypatch.setattr(prepare, "build_cached", lambda root, key, build: tmp_path)
    monkeypatch.setattr(prepare.Dataset, "load", staticmethod(lambda path: None))
    (tmp_path / "log.csv").write_text("\n".join(_log_rows(1)) + "\n")
    prepare.prepare_dataset(tmp_path / "log.csv", cache_dir=tmp_path)
    prepare.prepare_dataset(tmp_path / "log.csv", cache_dir=tmp_path, column_names=["user", "item", "ts"])
    assert "column_names" not in keys[0] and keys[1]["column_names"] == ["user", "item", "ts"]


@pytest.mark.parametrize(
    ("extra", "gap", "by_sid"),
    [
        (["--session-col", "sid"], None, True),  # the log's sessions as they are, across gaps of up to 25 h
        (["--session-col", "sid", "--session-gap", "1800"], 1800, True),  # asked for: also cut at gaps
        (["--session-col", "sid", "--config", "{gap_toml}"], 1800, True),  # ... from a config file too
        ([], 1800, False),  # no session column: the 1800 s rule
    ],
)
def test_prepare_keeps_the_sessions_of_a_session_column(tmp_path, capsys, extra, gap, by_sid):
    path = tmp_path / "sessnum.csv"
    pairs = session_numbered_log(path)
    (tmp_path / "gap.toml").write_text("session_gap = 1800\n")
    extra = [a.format(gap_toml=tmp_path / "gap.toml") for a in extra]
    summary = _prepare(tmp_path, capsys, path, *extra)
    log = read_log(path, session_col="sid", **COLUMNS)
    packed = pack_sessions(log.user, log.item, log.timestamp, session_gap=gap or float("inf"),
                           session=log.session if by_sid else None)  # fmt: skip
    assert summary["preset_report"]["before"]["sessions"] == packed.n_sessions  # sessions before the split's drops
    assert (packed.n_sessions == pairs) == (gap is None)
    assert summary["session_gap"] == gap
    argv = ["prepare", "--data", str(path), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
            "--cache-dir", str(tmp_path / "cache"), *extra]  # fmt: skip
    assert cli.main(argv) == 0  # the summary line names the session rule
    rule = "the log's sessions, no session gap" if gap is None else "session gap 1800 s"
    assert rule in capsys.readouterr().out
