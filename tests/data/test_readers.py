import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiertcn.data.readers import BadRowsError, detect_format, read_impressions, read_log

XING = (
    "user_id\titem_id\tinteraction_type\tcreated_at\n"
    "7\t100\t1\t1446336000\n"
    "3\t200\t4\t1446336060\n"
    "7\t300\t2\t1446339999\n"
)


def write(path, text):
    path.write_text(text)
    return path


def test_xing(tmp_path):
    path = write(tmp_path / "interactions.csv", XING)
    assert detect_format(path) == "xing"
    log = read_log(path)
    np.testing.assert_array_equal(log.user, [7, 3, 7])
    np.testing.assert_array_equal(log.item, [100, 200, 300])
    np.testing.assert_array_equal(log.interaction_type, [1, 4, 2])
    np.testing.assert_array_equal(log.timestamp, [1446336000, 1446336060, 1446339999])
    assert log.interaction_type.dtype == np.int8 and log.timestamp.dtype == np.int64
    assert log.user_names is None and len(log.skipped_lines) == 0


def test_xing_impressions(tmp_path):
    inter = write(tmp_path / "interactions.csv", XING)
    imp = write(
        tmp_path / "impressions.csv", "user_id\tyear\tweek\titems\n7\t2015\t45\t100,300,5\n3\t2015\t46\t9\n"
    )
    with pytest.raises(ValueError, match="impressions"):
        read_log(imp)
    log = read_log(inter, impressions=imp)
    np.testing.assert_array_equal(log.impressions.user, [7, 3])
    np.testing.assert_array_equal(log.impressions.week, [45, 46])
    np.testing.assert_array_equal(log.impressions.item_ptr, [0, 3, 4])
    np.testing.assert_array_equal(log.impressions.items, [100, 300, 5, 9])
    assert len(read_impressions(imp)) == 2


def test_csv_string_ids_are_factorised_in_name_order(tmp_path):
    path = write(tmp_path / "log.csv", "uid,iid,t\nbob,x9,5\nalice,x1,6\nbob,x1,7\n")
    log = read_log(path, user_col="uid", item_col="iid", time_col="t")
    assert list(log.user_names) == ["alice", "bob"] and list(log.item_names) == ["x1", "x9"]
    np.testing.assert_array_equal(log.user, [1, 0, 1])
    np.testing.assert_array_equal(log.item, [1, 0, 0])
    np.testing.assert_array_equal(log.timestamp, [5, 6, 7])


def test_tsv_sniffed_with_session_column(tmp_path):
    path = write(tmp_path / "log.txt", "user_id\titem_id\ttimestamp\tsid\n1\t2\t10\t5\n1\t3\t11\t6\n")
    log = read_log(path, session_col="sid")
    np.testing.assert_array_equal(log.session, [5, 6])
    np.testing.assert_array_equal(log.item, [2, 3])


def test_explicit_sep(tmp_path):
    path = write(tmp_path / "log.csv", "user_id;item_id;timestamp\n1;2;10\n4;5;20\n")
    np.testing.assert_array_equal(read_log(path, sep=";").user, [1, 4])


@pytest.mark.parametrize("unit", ["auto", "ms"])
def test_millisecond_timestamps(tmp_path, unit):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,1446336000123\n1,3,1446336005999\n")
    np.testing.assert_array_equal(read_log(path, time_unit=unit).timestamp, [1446336000, 1446336005])


def test_seconds_declared_keeps_small_values(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,12\n1,3,7.9\n")
    np.testing.assert_array_equal(read_log(path, time_unit="s").timestamp, [12, 7])


@pytest.mark.parametrize("unit", ["auto", "iso"])
def test_iso_timestamps(tmp_path, unit):
    text = "user_id,item_id,timestamp\n1,2,2015-11-01T00:00:10Z\n1,3,2015-11-01 00:01:00\n2,3,2015-11-02\n"
    path = write(tmp_path / "log.csv", text)
    np.testing.assert_array_equal(
        read_log(path, time_unit=unit).timestamp, [1446336010, 1446336060, 1446422400]
    )


def test_iso_timestamps_with_fractions_are_floored(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp\n1,2,2015-11-01T00:00:10.500\n1,3,2015-11-01 00:01:00.250\n",
    )
    np.testing.assert_array_equal(read_log(path).timestamp, [1446336010, 1446336060])
    assert len(read_log(path).skipped_lines) == 0


def test_parquet_with_string_ids(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": ["b", "a"], "i": [10, 20], "ts": [1446336000, 1446336001]}), path)
    log = read_log(path, user_col="u", item_col="i", time_col="ts")
    np.testing.assert_array_equal(log.user, [1, 0])
    np.testing.assert_array_equal(log.item, [10, 20])


def test_parquet_null_time_reported_by_row(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": [5.0, float("nan"), 7.0]}), path
    )
    with pytest.raises(BadRowsError, match=r"row\(s\) 2"):
        read_log(path)
    np.testing.assert_array_equal(read_log(path, skip_bad_rows=True).timestamp, [5, 7])


def test_movielens_u_data(tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert detect_format(path) == "movielens"
    log = read_log(path)
    np.testing.assert_array_equal(log.user, [196, 186])
    np.testing.assert_array_equal(log.timestamp, [881250949, 891717742])


def test_movielens_ratings_dat(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    log = read_log(path)
    np.testing.assert_array_equal(log.item, [1193, 661])
    np.testing.assert_array_equal(log.timestamp, [978300760, 978302109])


def test_recbole_inter(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n3\t50\t4.0\t881250949.0\n4\t60\t2.0\t881250950.0\n"
    path = write(tmp_path / "ml.inter", text)
    assert detect_format(path) == "recbole"
    log = read_log(path)
    np.testing.assert_array_equal(log.user, [3, 4])
    np.testing.assert_array_equal(log.timestamp, [881250949, 881250950])


def test_bad_rows_report_line_numbers(tmp_path):
    text = (
        XING
        + "7\t400\n"
        + "8\tabc\t1\t1446336100\n"
        + "9\t500\t1\t\n"
        + "9\t600\t1\t-5\n"
        + "9\t700\t1\t1446336200\n"
    )
    path = write(tmp_path / "interactions.csv", text)
    with pytest.raises(BadRowsError, match=r"4 bad row\(s\).* line\(s\) 5, 6, 7, 8;"):
        read_log(path)
    log = read_log(path, skip_bad_rows=True)
    np.testing.assert_array_equal(log.skipped_lines, [5, 6, 7, 8])
    np.testing.assert_array_equal(log.item, [100, 200, 300, 700])
    np.testing.assert_array_equal(log.timestamp[-1], 1446336200)


def test_blank_lines_are_ignored_and_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,10\n\n1,3,x\n\n1,4,12\n\n")
    with pytest.raises(BadRowsError, match=r"1 bad row\(s\).* line\(s\) 4;"):
        read_log(path, time_unit="s")
    log = read_log(path, time_unit="s", skip_bad_rows=True)
    np.testing.assert_array_equal(log.item, [2, 4])
    np.testing.assert_array_equal(log.skipped_lines, [4])


def test_nan_timestamp_is_a_bad_row(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,10\n1,3,NaN\n")
    with pytest.raises(BadRowsError, match=r"line\(s\) 3"):
        read_log(path)


def test_every_row_bad(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,x\n1,3,y\n")
    with pytest.raises(ValueError, match="every row is bad"):
        read_log(path, skip_bad_rows=True, time_unit="s")


def test_missing_column_names_argument(tmp_path):
    path = write(tmp_path / "log.csv", "person,item_id,timestamp\n1,2,10\n")
    with pytest.raises(ValueError, match=r"user_col='user_id'.*columns \['person', 'item_id', 'timestamp'\]"):
        read_log(path)
    with pytest.raises(ValueError, match="time_col='when'"):
        read_log(path, user_col="person", time_col="when")
    with pytest.raises(ValueError, match="missing column.*user_col='user_id'"):
        read_log(write(tmp_path / "interactions.csv", XING.replace("user_id", "uid", 1)), format="xing")


def test_headerless_csv_is_read_with_column_names(tmp_path):
    rows = "u7,100,5,1446336000\nu3,200,4,1446336060\nu7,300,1,bad\n"
    path = write(tmp_path / "ratings.csv", rows)
    with pytest.raises(ValueError, match="first line looks like data.*--column-names"):
        read_log(path)
    log = read_log(path, column_names=["user_id", "item_id", "rating", "timestamp"], skip_bad_rows=True)
    np.testing.assert_array_equal(log.user_names[log.user], ["u7", "u3"])  # the first line is a row, not a header
    np.testing.assert_array_equal(log.timestamp, [1446336000, 1446336060])
    np.testing.assert_array_equal(log.skipped_lines, [3])  # line 3 of the file: no header line counted
    log = read_log(path, column_names=[" who", "what", "r", "when"], user_col="who", item_col="what", time_col="when",
                   skip_bad_rows=True)  # fmt: skip
    assert len(log.user) == 2
    tsv = write(tmp_path / "plays.tsv", rows.replace(",", "\t"))
    assert len(read_log(tsv, column_names=["user_id", "item_id", "rating", "timestamp"], skip_bad_rows=True).user) == 2


def test_column_names_errors(tmp_path):
    path = write(tmp_path / "ratings.csv", "1,100,5,1446336000\n")
    with pytest.raises(ValueError, match="3 names but the first line has 4 fields"):
        read_log(path, column_names=["user_id", "item_id", "timestamp"])
    with pytest.raises(ValueError, match="'a' more than once"):
        read_log(path, column_names=["a", "a", "b", "c"])
    with pytest.raises(TypeError, match="list of strings"):
        read_log(path, column_names="user_id,item_id,rating,timestamp")
    with pytest.raises(ValueError, match="no empty name"):  # the CLI reports ValueErrors, not TypeErrors
        read_log(path, column_names=["user_id", "", "rating", "timestamp"])
    with pytest.raises(ValueError, match="without a header line; .* is read as xing"):
        read_log(write(tmp_path / "interactions.csv", XING), column_names=["a", "b", "c", "d"])
    # Last.fm-1K's plays have no number in their first line, but an ISO time.
    lastfm = write(tmp_path / "plays.tsv", "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71\tDeep Dish\t\tFlashdance\n")
    with pytest.raises(ValueError, match="looks like data"):
        read_log(lastfm, user_col="user", item_col="artist", time_col="time")
    # A header that merely lacks a role is not called data.
    with pytest.raises(ValueError, match=r"columns \['person', 'item_id', 'timestamp'\]$"):
        read_log(write(tmp_path / "log.csv", "person,item_id,timestamp\n1,2,10\n"))


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        read_log(write(tmp_path / "empty.csv", ""))
    with pytest.raises(ValueError, match="no data rows"):
        read_log(write(tmp_path / "interactions.csv", XING.splitlines()[0] + "\n"))


def test_bad_arguments(tmp_path):
    path = write(tmp_path / "interactions.csv", XING)
    with pytest.raises(ValueError, match="time_unit"):
        read_log(path, time_unit="hours")
    with pytest.raises(ValueError, match="format"):
        read_log(path, format="excel")
    with pytest.raises(ValueError, match="sep"):
        read_log(path, sep="::")
    with pytest.raises(FileNotFoundError, match="path"):
        read_log(tmp_path / "nope.csv")


def test_quoted_header_and_values(tmp_path):
    path = write(tmp_path / "log.csv", '"user_id","item_id","timestamp"\n"u1","i,1",10\n')
    log = read_log(path)
    assert list(log.user_names) == ["u1"] and list(log.item_names) == ["i,1"]


def test_unterminated_quote_is_a_clear_error(tmp_path):
    path = write(tmp_path / "log.csv", 'user_id,item_id,timestamp\n1,"2,10\n3,4,5\n')
    with pytest.raises(BadRowsError, match=r"1 bad row\(s\).* line\(s\) 2;"):
        read_log(path)
    with pytest.raises(ValueError, match="every row is bad"):
        read_log(path, skip_bad_rows=True)


def test_common_column_names_are_found(tmp_path):
    path = write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n",
    )
    log = read_log(path)
    np.testing.assert_array_equal(log.item, [31, 1029])
    np.testing.assert_array_equal(log.timestamp, [1260759144, 1260759179])


@pytest.mark.parametrize("bad_row", ["", "1,9,garbage\n"])
def test_iso_offsets_are_utc_on_both_parsing_passes(tmp_path, bad_row):
    # A bad row sends the file through the careful text pass; offsets must mean the same there.
    text = "user_id,item_id,timestamp\n1,2,2020-01-01T10:00:00+02:00\n1,3,2020-01-01T10:00:00-0130\n" + bad_row
    text += "2,3,2020-01-01T08:00:00Z\n"
    log = read_log(write(tmp_path / "log.csv", text), skip_bad_rows=True)
    np.testing.assert_array_equal(log.timestamp, [1577865600, 1577878200, 1577865600])  # 08:00Z, 11:30Z, 08:00Z
    assert len(log.skipped_lines) == (1 if bad_row else 0)


def test_integral_decimal_ids_are_integers_whatever_else_is_in_the_file(tmp_path):
    # pandas writes an int column with a missing value as 1.0, 2.0, ...; with or without a bad row (which
    # sends the file through the text pass) those are the integer ids 1, 2.
    for extra in ("", ",10.0,400\n"):
        path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1.0,10.0,100\n2.0,10.0,200\n" + extra)
        log = read_log(path, skip_bad_rows=True)
        assert log.user_names is None and log.item_names is None
        assert log.user.tolist() == [1, 2] and log.item.tolist() == [10, 10]


def test_ids_beyond_int64_are_string_ids_or_bad_rows(tmp_path):
    big = "99999999999999999999999"
    log = read_log(write(tmp_path / "log.csv", f"user_id,item_id,timestamp\n1,{big},5\n2,3,6\n"))
    assert list(log.item_names) == ["3", big]  # ids are labels: too long for int64, so strings
    xing = "user_id\titem_id\tinteraction_type\tcreated_at\n1\t2\t1\t100\n1\t" + big + "\t1\t200\n"
    path = write(tmp_path / "interactions.csv", xing)  # XING declares integer ids: a bad row, by line
    with pytest.raises(ValueError, match=r"at line\(s\) 3;"):
        read_log(path)
    assert read_log(path, skip_bad_rows=True).skipped_lines.tolist() == [3]


def test_a_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id\titem_id\tinteraction_type\tcreated_at\n1\t2\t1\t100\n1\t3\t1\t200\n")
    log = read_log(path)  # detected as XING despite the mark
    assert log.user.tolist() == [1, 1] and log.timestamp.tolist() == [100, 200]
