"""read_log on the input edge cases a review found: null tokens, per-value time units, huge ids, compressed files."""

import bz2
import gzip

import pytest

from hiertcn.data.readers import BadRowsError, detect_format, read_log

HEAD = "user_id,item_id,timestamp\n"


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("token", ["NA", "NaN", "null", "", "N/A"])
@pytest.mark.parametrize("column", [0, 1])
def test_a_null_token_in_an_id_column_is_a_missing_id(tmp_path, token, column):
    # The fast pass reads NA/NaN/null as null; the text pass must too, not as a user or item named "NA".
    rows = [["1", "10", "100"], ["2", "11", "200"], ["3", "12", "300"], ["10", "13", "400"]]
    rows[2][column] = token
    path = write(tmp_path / "log.csv", HEAD + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(BadRowsError, match=r"1 bad row\(s\).* line\(s\) 4;"):
        read_log(path)
    log = read_log(path, skip_bad_rows=True)
    assert log.skipped_lines.tolist() == [4]
    assert log.user_names is None and log.item_names is None  # still integer ids, in numeric order
    assert log.user.tolist() == [1, 2, 10] and log.item.tolist() == [10, 11, 13]


def test_a_null_token_in_a_string_id_or_session_column_is_a_missing_value(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp,sid\nann,x,1,5\nNA,y,2,5\nbo,z,3,NaN\nbo,x,4,6\n")
    with pytest.raises(BadRowsError, match=r"line\(s\) 3, 4;"):
        read_log(path, session_col="sid")
    log = read_log(path, session_col="sid", skip_bad_rows=True)
    assert list(log.user_names) == ["ann", "bo"] and log.session.tolist() == [5, 6]


def test_times_are_read_per_value_in_a_mixed_column(tmp_path):
    # one number in an ISO column, one millisecond time among seconds: every other row keeps its meaning
    text = HEAD + "1,10,2020-01-01T00:00:00\n1,11,2020-01-01T00:10:00Z\n2,12,1577836800\n2,13,1577840400000\n"
    log = read_log(write(tmp_path / "log.csv", text))
    assert log.timestamp.tolist() == [1577836800, 1577837400, 1577836800, 1577840400]
    assert len(log.skipped_lines) == 0
    seconds = HEAD + "1,10,1577836800\n1,11,1577840400\n1,12,1577844000\n2,13,1577836800123\n"
    path = write(tmp_path / "s.csv", seconds)
    assert read_log(path).timestamp.tolist() == [1577836800, 1577840400, 1577844000, 1577836800]
    assert read_log(path, time_unit="s").timestamp.tolist()[:3] == [1577836800, 1577840400, 1577844000]
    assert read_log(path, time_unit="ms").timestamp.tolist() == [1577836, 1577840, 1577844, 1577836800]


@pytest.mark.parametrize("bad_row", ["", "1,9,garbage\n"])  # with a bad row the text pass reads the times
def test_micro_and_nanosecond_times_by_their_size(tmp_path, bad_row):
    text = HEAD + "1,10,1577836800123456\n1,11,1577836801999999999\n" + bad_row + "1,12,1577836802\n"
    log = read_log(write(tmp_path / "log.csv", text), skip_bad_rows=True)
    assert log.timestamp.tolist() == [1577836800, 1577836801, 1577836802]  # ns floored exactly, not rounded up
    declared = read_log(write(tmp_path / "us.csv", HEAD + "1,10,5000000\n1,11,7999999\n"), time_unit="us")
    assert declared.timestamp.tolist() == [5, 7]
    ns = read_log(write(tmp_path / "ns.csv", HEAD + "1,10,1577836800000000000\n"), time_unit="ns")
    assert ns.timestamp.tolist() == [1577836800]


def test_ids_beyond_2_53_stay_distinct_when_one_is_written_as_a_decimal(tmp_path):
    # "5.0" makes Arrow infer float64, which merges 9007199254740993 into ...992
    text = HEAD + "9007199254740993,10,100\n9007199254740992,10,200\n5.0,11,300\n"
    log = read_log(write(tmp_path / "log.csv", text))
    assert log.user_names is None
    assert log.user.tolist() == [9007199254740993, 9007199254740992, 5]


@pytest.mark.parametrize("bad_row", ["", ",12,2020-01-01T00:20\n"])
def test_iso_times_without_seconds_on_both_passes(tmp_path, bad_row):
    text = HEAD + "1,10,2020-01-01T00:00\n1,11,2020-01-01 00:10+02:00\n" + bad_row + "2,13,2020-01-01T00:30-0100\n"
    log = read_log(write(tmp_path / "log.csv", text), skip_bad_rows=True)
    assert log.timestamp.tolist() == [1577836800, 1577830200, 1577842200]
    assert len(log.skipped_lines) == (1 if bad_row else 0)


def test_compressed_files_read_like_plain_ones(tmp_path):
    xing = "user_id\titem_id\tinteraction_type\tcreated_at\n1\t10\t1\t100\n1\t11\t4\t200\n"
    with gzip.open(tmp_path / "interactions.csv.gz", "wt") as f:
        f.write(xing)
    assert detect_format(tmp_path / "interactions.csv.gz") == "xing"
    log = read_log(tmp_path / "interactions.csv.gz")
    assert log.item.tolist() == [10, 11] and log.interaction_type.tolist() == [1, 4]
    with gzip.open(tmp_path / "log.tsv.gz", "wt") as f:  # .tsv.gz: tab-separated by its name
        f.write("a b\tc\tt\nu 1\tx\t5\n")
    log = read_log(tmp_path / "log.tsv.gz", user_col="a b", item_col="c", time_col="t")
    assert list(log.user_names) == ["u 1"]
    # bad rows and blank lines are located inside the decompressed text
    with bz2.open(tmp_path / "log.csv.bz2", "wt") as f:
        f.write(HEAD + "1,10,100\n\n1,11,oops\n,,\n1,12,300\n")
    with pytest.raises(BadRowsError, match=r"2 bad row\(s\).* line\(s\) 4, 5;"):
        read_log(tmp_path / "log.csv.bz2")
    assert read_log(tmp_path / "log.csv.bz2", skip_bad_rows=True).item.tolist() == [10, 12]


def test_a_row_of_empty_fields_is_a_bad_row_but_a_blank_line_is_not(tmp_path):
    path = write(tmp_path / "log.csv", HEAD + "1,2,3\n\n,,\n\r\nNA,NA,NA\n4,5,6\n\n")
    with pytest.raises(BadRowsError, match=r"2 bad row\(s\).* line\(s\) 4, 6;"):
        read_log(path)
    log = read_log(path, skip_bad_rows=True)
    assert log.user.tolist() == [1, 4] and log.skipped_lines.tolist() == [4, 6]


def test_a_file_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes((HEAD + "Jos\xe9,a,1\nb,c,2\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"\['user_id'\] are not UTF-8 text"):
        read_log(path)


@pytest.mark.parametrize("sep", ["\\t", "tab", "\t"])
def test_a_tab_separator_by_name(tmp_path, sep):
    path = write(tmp_path / "log.txt", "user_id\titem_id\ttimestamp\n1\t2\t10\n4\t5\t20\n")
    assert read_log(path, sep=sep).user.tolist() == [1, 4]
