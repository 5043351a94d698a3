"""read_log errors and notices a CLI QA pass found unclear: a wrong format, stray non-integer ids, why
rows are bad, and header names with spaces."""

import re
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiertcn.data.readers import BadRowsError, read_log

HEAD = "user_id,item_id,timestamp\n"


def write(path, text):
    path.write_text(text)
    return path


def int_log(n, **replaced):
    """A CSV of ``n`` rows with integer ids; ``replaced`` maps a line number to its text."""
    lines = [HEAD.strip()] + [f"{i % 7},{i % 13},{1600000000 + 60 * i}" for i in range(n)]
    for line, text in replaced.items():
        lines[int(line) - 1] = text
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt", ["csv", "xing", "movielens", None])
def test_a_parquet_file_read_as_text_names_the_path_and_the_format(tmp_path, fmt):
    path = tmp_path / ("log.csv" if fmt is None else "log.parquet")  # None: detected as CSV by its name
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]}), path)
    with pytest.raises(
        ValueError, match=re.escape(f"{path} is a Parquet file, not CSV/TSV text; pass format='parquet'")
    ):
        read_log(path, format=fmt)


def test_a_csv_file_read_as_parquet_names_the_path_and_the_format(tmp_path):
    path = write(tmp_path / "log.csv", HEAD + "1,2,3\n")
    with pytest.raises(
        ValueError, match=re.escape(f"{path} is not a readable Parquet file") + r".*format='csv'"
    ):
        read_log(path, format="parquet")


@pytest.mark.parametrize("data", [b"PK\x03\x04\x14\x00\x08\n", b"\x1f\x9d\x90\r\x05\n"])  # NUL, a lone CR
def test_other_binary_data_read_as_csv_is_a_clear_error(tmp_path, data):
    path = tmp_path / "log.csv"
    path.write_bytes(data + b"1,2,3\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not CSV/TSV text")):
        read_log(path)


def test_a_few_non_integer_ids_warn_and_are_bad_rows_under_skip(tmp_path):
    path = write(tmp_path / "log.csv", int_log(200, **{"11": "2,abc,1600000100"}))
    message = (
        "item column 'item_id': 1 of 200 ids is not an integer (line 11: 'abc'); all ids are read as "
        "strings. Fix the row(s), or drop them with skip_bad_rows=True (--skip-bad-rows)"
    )
    with pytest.warns(UserWarning, match=re.escape(message)):
        log = read_log(path)
    assert "abc" in log.item_names and len(log.skipped_lines) == 0  # string ids stay supported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = read_log(path, skip_bad_rows=True)
    assert log.item_names is None and log.skipped_lines.tolist() == [11] and len(log) == 199


def test_string_ids_that_are_not_strays_read_without_a_warning(tmp_path):
    # 2 of 100 (over 1%) is a column of string ids, some of which look like numbers
    path = write(tmp_path / "log.csv", int_log(100, **{"3": "1,x1,1600000000", "5": "1,x2,1600000000"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {"x1", "x2"} <= set(read_log(path, skip_bad_rows=True).item_names)


def test_a_stray_string_id_in_parquet_is_named_by_row(tmp_path):
    path = tmp_path / "log.parquet"
    users = [str(i) for i in range(150)]
    users[40] = "bob"
    pq.write_table(pa.table({"user_id": users, "item_id": [1] * 150, "timestamp": list(range(150))}), path)
    with pytest.warns(
        UserWarning, match=r"user column 'user_id': 1 of 150 ids is not an integer \(row 41: 'bob'\)"
    ):
        read_log(path)
    assert read_log(path, skip_bad_rows=True).skipped_lines.tolist() == [41]


def test_a_bad_row_error_names_the_column_the_value_and_why(tmp_path):
    path = write(tmp_path / "log.csv", int_log(50, **{"4": "1,2,09/13/2020 12:27", "9": "3,,100"}))
    with pytest.raises(BadRowsError) as err:
        read_log(path)
    message = str(err.value)
    assert "2 bad row(s) at line(s) 4, 9; line 4: time column 'timestamp': '09/13/2020 12:27'" in message
    assert "is neither a number (unix s/ms/us/ns) nor ISO 8601" in message and "--skip-bad-rows" in message
    path = write(tmp_path / "fields.csv", int_log(50, **{"6": "1,2"}))
    with pytest.raises(
        BadRowsError, match=r"line 6: 2 field\(s\) where the csv layout has 3 .*'1,2'; pass skip"
    ):
        read_log(path)
    path = write(tmp_path / "unit.csv", int_log(50, **{"7": "1,2,2020-01-01"}))
    with pytest.raises(
        BadRowsError, match=r"line 7: time column 'timestamp': '2020-01-01' is not a number \(time_unit='s'\)"
    ):
        read_log(path, time_unit="s")


@pytest.mark.parametrize("skip", [False, True])
def test_when_every_row_is_bad_the_error_blames_the_format_not_the_rows(tmp_path, skip):
    path = write(
        tmp_path / "log.csv", HEAD + "0,19,09/13/2020 12:27\n0,9,09/13/2020 12:28\n1,3,09/14/2020 08:00\n"
    )
    with pytest.raises(BadRowsError) as err:
        read_log(path, skip_bad_rows=skip)
    message = str(err.value)
    assert "every row is bad: 3 bad row(s) at line(s) 2, 3, 4; line 2: time column 'timestamp'" in message
    assert "'09/13/2020 12:27' is neither a number" in message
    assert "the 'timestamp' column's format is not understood" in message and "--time-unit" in message
    assert "skip" not in message
    # a comma CSV read as MovieLens (tab-separated): no row splits
    with pytest.raises(BadRowsError) as err:
        read_log(path, format="movielens", skip_bad_rows=skip)
    message = str(err.value)
    assert "every row is bad" in message and "line 1: 1 field(s) where the movielens layout has 4" in message
    assert "format='csv' (--format csv)" in message and "skip" not in message


def test_nearly_every_row_bad_does_not_suggest_skipping(tmp_path):
    rows = {str(line): f"1,2,{line}/13/2020" for line in range(2, 21)}  # 19 of 20 rows
    path = write(tmp_path / "log.csv", int_log(20, **rows))
    with pytest.raises(BadRowsError, match="nearly every row is bad: 19 bad row") as err:
        read_log(path)
    assert "skip" not in str(err.value)
    assert len(read_log(path, skip_bad_rows=True)) == 1  # asked for: the rows are dropped


def test_header_names_with_spaces_after_the_commas(tmp_path):
    path = write(tmp_path / "log.csv", "user_id, item_id, timestamp\n0, 19, 1600000020\n1, 9, 1600000040\n")
    log = read_log(path)
    assert log.user.tolist() == [0, 1] and log.item.tolist() == [19, 9]
    assert log.timestamp.tolist() == [1600000020, 1600000040]
    assert read_log(path, item_col="item_id", time_col=" timestamp").item.tolist() == [19, 9]


def test_a_semicolon_separated_file_names_its_separator(tmp_path):
    path = write(tmp_path / "log.csv", int_log(5).replace(",", ";"))
    with pytest.raises(ValueError, match=re.escape("it looks ';'-separated: pass sep=';' (--sep ';')")):
        read_log(path)
    assert len(read_log(path, sep=";")) == 5


def test_a_header_read_as_data_under_column_names_says_so(tmp_path):
    path = write(tmp_path / "log.csv", int_log(5))
    with pytest.raises(BadRowsError, match=re.escape("line 1 holds the column names: the file has a header, so drop")):
        read_log(path, column_names=["user_id", "item_id", "timestamp"])
    bad_first = write(tmp_path / "bad.csv", int_log(5).replace(HEAD, ""))  # no header; line 1 has a bad time
    bad_first.write_text("1,2,soon\n" + bad_first.read_text())
    with pytest.raises(BadRowsError, match="skip_bad_rows") as err:
        read_log(bad_first, column_names=["user_id", "item_id", "timestamp"])
    assert "column names" not in str(err.value)


@pytest.mark.parametrize("unit, expect_warning", [("s", True), ("ms", False), ("auto", False)])
def test_times_after_2100_warn_of_a_wrong_unit(tmp_path, unit, expect_warning):
    ms = "".join(f"{i % 7},{i % 13},{1600000000000 + 60000 * i}\n" for i in range(20))
    path = write(tmp_path / "log.csv", HEAD + ms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = read_log(path, time_unit=unit)
    said = [str(w.message) for w in caught if "after the year 2100" in str(w.message)]
    assert bool(said) == expect_warning
    assert not said or "20 of 20 times" in said[0] and "--time-unit: s" in said[0]
    assert log.timestamp.min() == (1600000000000 if unit == "s" else 1600000000)
