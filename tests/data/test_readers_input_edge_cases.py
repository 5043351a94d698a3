"""read_log on the input edge cases a review found: null tokens, per-value time units, huge ids, compressed files."""

import bz2
import datetime as dt
import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiertcn.data.readers import BadRowsError, detect_format, read_log
from hiertcn_kernels import pack_sessions

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
    with pytest.warns(UserWarning, match="1 of 4 times fall after the year 2100"):  # the ms time, declared s
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


def packed_items(log):
    """The raw items of the first user's first session, in the order the packer puts them."""
    csr = pack_sessions(log.user, log.item, log.timestamp, session=log.session)
    items = csr.item_ids[csr.item[csr.session_ptr[0] : csr.session_ptr[1]]]
    return items.tolist() if log.item_names is None else log.item_names[items].tolist()


BASE_MS = 1_600_000_000_000
# 30 users, each a session of items 0..9 at 0, 50, ..., 450 ms into one second, written newest first
EVENTS = [(u, i, BASE_MS + u * 3_600_000 + 50 * i) for u in range(30) for i in range(10)][::-1]
TIME_TEXT = {
    "ms": str,
    "float seconds": lambda ms: f"{ms / 1000:.3f}",
    "iso": lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
}


@pytest.mark.parametrize("bad_row", [False, True])  # with a bad row the text pass reads the times
@pytest.mark.parametrize("form", ["ms", "declared ms", "float seconds", "iso", "parquet"])
def test_events_within_a_second_are_packed_in_time_order_not_file_order(tmp_path, form, bad_row):
    if form == "parquet":
        user, item, ms = map(np.array, zip(*EVENTS))
        table = pa.table({"user_id": user, "item_id": item, "sid": user + 100, "timestamp": pa.array(ms, pa.timestamp("ms"))})
        pq.write_table(table, path := tmp_path / "log.parquet")
    else:
        text = TIME_TEXT["ms" if form == "declared ms" else form]
        lines = [f"{u},{i},{u + 100},{text(ms)}\n" for u, i, ms in EVENTS]
        if bad_row:
            lines.insert(5, "3,4,103,garbage\n")  # line 7
        path = write(tmp_path / "log.csv", "user_id,item_id,sid,timestamp\n" + "".join(lines))
    log = read_log(path, time_unit="ms" if form == "declared ms" else "auto", session_col="sid", skip_bad_rows=True)
    assert packed_items(log) == list(range(10))
    assert log.timestamp.dtype == np.int64 and log.timestamp.max() == (BASE_MS + 29 * 3_600_000) // 1000
    assert (log.session == log.user + 100).all()  # the session column moved with its rows
    assert log.skipped_lines.tolist() == ([7] if bad_row and form != "parquet" else [])


def test_whole_second_ties_keep_file_order(tmp_path):
    path = write(tmp_path / "log.csv", HEAD + "1,12,100\n2,5,100\n1,10,100\n1,11,100\n1,9,99\n")
    log = read_log(path)
    assert log.item.tolist() == [12, 5, 10, 11, 9]
    assert packed_items(log) == [9, 12, 10, 11]


def test_sub_second_order_moves_only_rows_that_share_a_second(tmp_path):
    path = write(tmp_path / "log.csv", HEAD + "1,10,5900\n2,20,7000\n1,11,5100\n2,21,6000\n1,12,5500\n")
    log = read_log(path, time_unit="ms")
    assert log.timestamp.tolist() == [5, 7, 5, 6, 5]
    assert log.item.tolist() == [11, 20, 12, 21, 10] and log.user.tolist() == [1, 2, 1, 2, 1]


PADDED = [f"{k:06d}" for k in range(1, 40)] + ["5", "000005"]  # 40 ids: "000005" twice


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_ids_written_with_leading_zeros_are_names_as_written(tmp_path, source):
    times = list(range(1_000, 1_000 + len(PADDED)))
    if source == "parquet":
        pq.write_table(pa.table({"user_id": ["7"] * len(PADDED), "item_id": PADDED, "timestamp": times}),
                       path := tmp_path / "log.parquet")  # fmt: skip
    else:
        path = write(tmp_path / "log.csv", HEAD + "".join(f"7,{i},{t}\n" for i, t in zip(PADDED, times)))
    log = read_log(path)
    assert log.n_items == 40
    assert log.item_names[log.item].tolist() == PADDED
    assert log.user_names is None and log.user.tolist() == [7] * 41  # a plain integer column stays integers


@pytest.mark.parametrize("ids", [["-5", "0", "7", "120"], ["-5.0", "0.0", "7.0", "120.0"]])
def test_integer_ids_in_their_own_form_are_integers(tmp_path, ids):
    path = write(tmp_path / "log.csv", HEAD + "".join(f"1,{i},{t}\n" for t, i in enumerate(ids)))
    log = read_log(path)
    assert log.item_names is None and log.item.tolist() == [-5, 0, 7, 120]


@pytest.mark.parametrize(("suffix", "codec"), [(".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"), (".lz4", "lz4")])
def test_a_file_named_as_compressed_that_is_not_names_itself(tmp_path, suffix, codec):
    path = write(tmp_path / f"fake.csv{suffix}", HEAD + "1,2,3\n")
    with pytest.raises(ValueError, match=rf"fake\.csv\{suffix} is not a valid {codec} file"):
        read_log(path)
    with pytest.raises(ValueError, match=rf"fake\.csv\{suffix} is not a valid {codec} file"):
        read_log(path, format="csv")


def test_a_truncated_gzip_file_names_itself(tmp_path):
    data = gzip.compress((HEAD + "".join(f"{k},{k},{k}\n" for k in range(50_000))).encode())
    (path := tmp_path / "log.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"log\.csv\.gz is not a valid gzip file: it is cut short or damaged"):
        read_log(path)
