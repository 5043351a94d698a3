"""Readers: interaction files to :class:`InteractionLog`, streaming through Arrow.

CSV-like files are read with ``pyarrow.csv.open_csv`` block by block and
Parquet with ``ParquetFile.iter_batches``; only the needed columns are kept,
as Arrow buffers, then converted to numpy once. No row ever becomes a Python
object, so multi-GB logs read at Arrow speed.

Bad input. A first pass parses typed columns on all cores. If anything is
wrong (a row with the wrong number of fields, a value that does not parse, an
empty id, a NaN or negative timestamp), the file is read again single-threaded
with the needed columns as text, so every bad row is located by its line
number (1-based, header and blank lines included; assumes no multi-line quoted
fields). Then ``skip_bad_rows=False`` raises a ValueError listing the first
bad lines, with the column, value and reason of the first one, and
``skip_bad_rows=True`` drops them and records their line numbers in
``InteractionLog.skipped_lines``. When nearly every row is bad (``_MOSTLY_BAD``)
the error blames the format or the column instead of suggesting to skip rows.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from hiertcn.data.log import Impressions, InteractionLog

FORMATS = ("xing", "csv", "parquet", "movielens", "recbole")
TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")
XING_HEADER = ["user_id", "item_id", "interaction_type", "created_at"]
XING_IMPRESSIONS_HEADER = ["user_id", "year", "week", "items"]
# Generic CSV/Parquet without user_col/item_col/time_col: the first of these names the file has.
COMMON_COLUMNS = {
    "user": ("user_id", "userId", "user", "uid", "visitorid"),
    "item": ("item_id", "itemId", "movieId", "item", "iid", "itemid"),
    "time": ("timestamp", "created_at", "time", "ts", "datetime", "date"),
}
_UNIT_DIVISORS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
# time_unit="auto" reads each number by its size: seconds below 1e11, ms from 1e11, us from 1e14, ns from 1e17.
# Each bound is past the year 5138 in the smaller unit and in 1973 in the larger, so no plausible time is ambiguous.
_AUTO_BOUNDS = ((1e17, 10**9), (1e14, 10**6), (1e11, 10**3))
# Arrow decompresses these by the file name; each codec's name and the magic bytes its files start with
_YEAR_2100 = 4_102_444_800  # unix seconds: a later time is more likely a wrong unit than a real event
_COMPRESSED = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bz2", b"BZh"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".lz4": ("lz4", b"\x04\x22\x4d\x18"),
}
_SEP_NAMES = {"tab": "\t", "\\t": "\t"}  # "\t" typed in a shell arrives as two characters
_INT_RE = r"^\s*-?\d+(\.0*)?\s*$"  # "7.0" too: pandas writes int columns with gaps so
_NUM_RE = r"^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_ISO_DATE_RE = r"^\s*\d{4}-\d{2}-\d{2}"  # a header line holds names, not dates: a sign of a header-less file
_BLOCK_SIZE = 4 << 20
_SHOWN_LINES = 10
# A string id column whose non-integer values are at most this share is integer ids with a few typos:
# read as strings with a warning, or with skip_bad_rows those values are bad rows and the ids stay integers.
_STRAY_SHARE = 0.01
_MOSTLY_BAD = 0.9  # this share of bad rows is a wrong format or column, not rows to skip
_ISO_FORM = "ISO 8601 (YYYY-MM-DD[Thh:mm[:ss]][Z|+hh:mm])"


@dataclass(frozen=True)
class _Layout:
    """How one file format is laid out: delimiter, header, and which column is which."""

    sep: str
    columns: dict[str, str]  # role (user, item, time, session, type) -> column name
    column_names: list[str] | None = None  # when the file has no usable header line
    skip_rows: int = 0
    types: dict[str, pa.DataType] = field(default_factory=dict)  # column -> Arrow type for the fast pass
    time_unit: str = "auto"


class BadRowsError(ValueError):
    """Raised when rows cannot be parsed and ``skip_bad_rows`` is False."""


def _plain(path: Path) -> Path:
    """``path`` without a compression suffix: ``log.tsv.gz`` is named like ``log.tsv``."""
    return path.with_suffix("") if path.suffix in _COMPRESSED else path


def _stream(path: Path) -> pa.NativeFile:
    """``path`` opened as decompressed bytes; a file named as compressed but not (plain text named ``.gz``)
    is a ValueError naming it, not Arrow's bare inflate error."""
    if path.suffix in _COMPRESSED:
        codec, magic = _COMPRESSED[path.suffix]
        with open(path, "rb") as f:
            if f.read(len(magic)) != magic:
                raise ValueError(f"{path} is not a valid {codec} file (it does not start with {codec}'s magic "
                                 f"bytes); if it is not compressed, drop {path.suffix!r} from its name")  # fmt: skip
    return pa.input_stream(path, compression="detect")


def format_session_column(path: str | Path, fmt: str) -> str | None:
    """The session id column ``read_log`` reads from a ``fmt`` log with no ``session_col`` (RecBole's
    ``session_id``), or None."""
    return _layout(Path(path), fmt, None).columns.get("session") if fmt == "recbole" else None


def detect_format(path: str | Path) -> str:
    """Guess the format from the file name (a ``.gz``/``.bz2``/``.zst``/``.lz4`` suffix aside), then from
    the first line."""
    path = Path(path)
    plain = _plain(path)
    if plain.suffix == ".parquet":
        if plain != path:  # ParquetFile cannot read through a compressed stream
            raise ValueError(f"{path}: Parquet compresses its own columns; decompress the file first")
        return "parquet"
    if plain.suffix == ".inter":
        return "recbole"
    if plain.name in ("u.data", "ratings.dat"):
        return "movielens"
    first = _first_line(path).strip()
    if first.split("\t") == XING_HEADER:
        return "xing"
    if first.split("\t") == XING_IMPRESSIONS_HEADER:
        raise ValueError(
            f"{path} is a XING impressions file: read it with read_impressions(), not read_log()"
        )
    return "csv"


def _first_line(path: Path) -> str:
    # decompressed (.gz, ...) as the reader will see it
    with io.BufferedReader(_stream(path)) as f:
        line = f.readline()
    return line.decode("utf-8-sig", errors="replace").rstrip("\r\n")


def _layout(path: Path, fmt: str, sep: str | None) -> _Layout:
    if fmt == "xing":
        return _Layout(
            sep="\t",
            columns={"user": "user_id", "item": "item_id", "time": "created_at", "type": "interaction_type"},
            types={
                "user_id": pa.int64(),
                "item_id": pa.int64(),
                "interaction_type": pa.int8(),
                "created_at": pa.int64(),
            },
            time_unit="s",
        )
    if fmt == "movielens":
        # ratings.dat: "user::item::rating::time", read with ':' as the delimiter and empty fields between
        if _plain(path).name.endswith(".dat"):
            names = ["user_id", "_1", "item_id", "_2", "rating", "_3", "timestamp"]
            return _Layout(
                sep=":",
                columns={"user": "user_id", "item": "item_id", "time": "timestamp"},
                column_names=names,
                time_unit="s",
            )
        return _Layout(
            sep="\t",
            columns={"user": "user_id", "item": "item_id", "time": "timestamp"},
            column_names=["user_id", "item_id", "rating", "timestamp"],
            time_unit="s",
        )
    if fmt == "recbole":  # typed header: "user_id:token<TAB>item_id:token<TAB>timestamp:float"
        names = [c.split(":")[0] for c in _first_line(path).split("\t")]
        columns = {"user": "user_id", "item": "item_id", "time": "timestamp"}
        if "session_id" in names:
            columns["session"] = "session_id"
        return _Layout(sep="\t", columns=columns, column_names=names, skip_rows=1)
    if fmt in ("csv", "parquet"):
        if sep is None and fmt == "csv":
            sep = "\t" if _plain(path).suffix in (".tsv", ".tab") or "\t" in _first_line(path) else ","
        return _Layout(sep=sep or ",", columns={"user": "user_id", "item": "item_id", "time": "timestamp"})
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _headerless(path: Path, fmt: str, layout: _Layout, column_names, fields: list[str]) -> _Layout:
    """The layout of a CSV/TSV file whose first line (``fields``) is data, its columns named by ``column_names``."""
    if fmt != "csv":
        raise ValueError(f"column_names is for CSV/TSV files without a header line; {path} is read as {fmt}")
    if isinstance(column_names, str) or not all(isinstance(n, str) for n in column_names):
        raise TypeError(f"column_names must be a list of strings, got {column_names!r}")
    if not all(n.strip() for n in column_names):
        raise ValueError(f"column_names must name every column (no empty name), got {list(column_names)!r}")
    names = [n.strip() for n in column_names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"column_names names {', '.join(map(repr, twice))} more than once")
    if len(fields) != len(names):
        raise ValueError(f"{path}: column_names has {len(names)} names but the first line has {len(fields)} "
                         f"fields separated by {layout.sep!r}: {fields}")  # fmt: skip
    return replace(layout, column_names=names)


def _is_parquet(path: Path) -> bool:
    with _stream(path) as f:
        return f.read(4) == b"PAR1"  # every Parquet file starts (and ends) with these magic bytes


def _content_format(path: Path) -> str:
    """The format the file's content looks like, for an error that suggests the right one."""
    if _is_parquet(path):
        return "parquet"
    first = _first_line(path)
    if first.split("\t") == XING_HEADER:
        return "xing"
    return "movielens" if "::" in first else "csv"


def _file_columns(path: Path, fmt: str, layout: _Layout) -> list[str]:
    if fmt == "parquet":
        try:
            return pq.ParquetFile(path).schema_arrow.names
        except pa.ArrowInvalid as exc:  # e.g. a CSV file read with format="parquet"
            looks = _content_format(path)
            hint = ""
            if looks != "parquet":
                hint = f"; if it is {looks} text, pass format={looks!r} (--format {looks})"
            raise ValueError(f"{path} is not a readable Parquet file ({exc}){hint}") from None
    if _is_parquet(path):  # binary: its "first line" is noise, or a csv.Error
        raise ValueError(f"{path} is a Parquet file, not CSV/TSV text; pass format='parquet' "
                         "(--format parquet), or name it .parquet")  # fmt: skip
    if layout.column_names is not None:
        return layout.column_names
    first = _first_line(path)
    try:
        if "\x00" in first:
            raise csv.Error("NUL bytes in the first line; a binary or UTF-16 file?")
        return next(csv.reader([first], delimiter=layout.sep))  # honours quoted names
    except csv.Error as exc:  # e.g. a lone '\r' inside the line: binary data
        raise ValueError(f"{path} is not CSV/TSV text ({exc}); pass the file's format (--format)") from None


def _read_table(
    path: Path,
    fmt: str,
    layout: _Layout,
    names: list[str],
    *,
    as_text: bool,
    bad_lines: list[int],
    first_bad: list | None = None,
) -> pa.Table:
    """Read the columns ``names`` in blocks; ``as_text`` reads them as strings, single-threaded, recording bad
    lines (and in ``first_bad`` the first such row, as Arrow's ``InvalidRow``, to explain it)."""
    progress = tqdm(desc=f"reading {path.name}", unit=" rows", unit_scale=True, disable=None, leave=False)
    batches = []
    try:
        if fmt == "parquet":
            parquet = pq.ParquetFile(path)
            schema = pa.schema([parquet.schema_arrow.field(name) for name in names])
            reader = parquet.iter_batches(batch_size=1 << 20, columns=names)
        else:

            def on_invalid(row):
                if not as_text:
                    return "error"  # the threaded pass has no line numbers: the careful pass locates it
                if first_bad is not None and not bad_lines:
                    first_bad.append(row)
                bad_lines.append(row.number)
                return "skip"

            types = (
                {c: pa.string() for c in names}
                if as_text
                else {c: t for c, t in layout.types.items() if c in names}
            )
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(
                    use_threads=not as_text,
                    block_size=_BLOCK_SIZE,
                    column_names=layout.column_names,
                    skip_rows=layout.skip_rows,
                ),
                # The careful pass keeps blank lines as all-empty rows so that row index -> line number is exact.
                parse_options=pacsv.ParseOptions(
                    delimiter=layout.sep, invalid_row_handler=on_invalid, ignore_empty_lines=not as_text
                ),
                # Both passes read "", NA, NaN, null, ... as null, so a missing id is a bad row on either.
                convert_options=pacsv.ConvertOptions(
                    include_columns=names, column_types=types, strings_can_be_null=True
                ),
            )
            schema = reader.schema
        for batch in reader:
            batches.append(batch)
            progress.update(batch.num_rows)
    except OSError as exc:  # past its magic bytes, a compressed file can still be cut short or damaged
        if path.suffix not in _COMPRESSED:
            raise
        codec = _COMPRESSED[path.suffix][0]
        raise ValueError(f"{path} is not a valid {codec} file: it is cut short or damaged ({exc})") from None
    progress.close()
    return pa.Table.from_batches(batches, schema=schema)


def _decoded(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """``table`` with its binary columns as strings, and the names of those that are not UTF-8 (kept binary)."""
    binary = []
    for i, name in enumerate(table.column_names):
        if pa.types.is_binary(table.schema.field(i).type):
            try:
                table = table.set_column(i, name, table.column(i).cast(pa.string()))
            except pa.ArrowInvalid:
                binary.append(name)
    return table, binary


class _Retry(Exception):
    """The fast pass met something it cannot locate; read again carefully."""


def _int_values(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Integer column to (int64 values, null mask), copying once; nulls become 0."""
    if col.null_count == 0:
        return col.cast(pa.int64()).to_numpy(), np.zeros(len(col), dtype=bool)
    return col.fill_null(0).cast(pa.int64()).to_numpy(), col.is_null().to_numpy(zero_copy_only=False)


def _ids(
    col: pa.ChunkedArray, what: str, integer: bool, text_pass: bool = False, strays_bad: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(int64 values or codes, names or None, invalid mask, strays). ``integer``: the format declares integer
    ids, so text that is not an integer is a bad row (otherwise a column with any non-integer, or any integer
    not written as the number is, such as ``000005``, is string ids).
    ``strays``: where a column of ids is integers but for at most ``_STRAY_SHARE`` of them, the mask of those
    that are not (likely typos), else None; ``strays_bad`` makes them bad rows and keeps integer ids.
    ``text_pass``: the file can be read again as text, so float ids too big to be exact raise ``_Retry``."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    if pa.types.is_integer(col.type):
        values, invalid = _int_values(col)
        return values, None, invalid, None
    if pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False)
        if text_pass and (np.abs(values) >= 2.0**53).any():
            raise _Retry  # float64 has merged distinct ids above 2**53: the text pass reads them exactly
        invalid = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= 2.0**63)
        return np.where(invalid, 0, values).astype(np.int64), None, invalid, None
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:  # the usual column, plain integers: one cast (it refuses spaces, "+", "7.0" and int64 overflow)
            values = pc.cast(col, pa.int64())
        except pa.ArrowInvalid:
            values = None
        if values is not None and (integer or not _padded(col)):
            values, invalid = _int_values(values)
            return values, None, invalid, None
        text = pc.utf8_trim_whitespace(col)
        empty = pc.fill_null(pc.equal(text, ""), True)
        digits = pc.replace_substring_regex(text, r"\.0*$", "")  # "7.0" -> "7"
        is_int = pc.and_(pc.fill_null(pc.match_substring_regex(text, _INT_RE), False), _fits_int64(digits))
        invalid = empty.to_numpy(zero_copy_only=False)
        strays = None
        # As 5, "000005" would merge with "5" and print as 5, no longer the source's id: the column is names
        padded = not integer and _padded(digits.filter(is_int))
        if not integer and not padded:
            other = pc.invert(pc.or_(is_int, empty))  # present, not an integer
            n_other = pc.sum(other).as_py() or 0
            if 0 < n_other <= _STRAY_SHARE * (len(col) - (pc.sum(empty).as_py() or 0)):
                strays = other.to_numpy(zero_copy_only=False)
                integer = strays_bad
            elif n_other == 0:
                integer = True  # every present id is an integer
        if integer:
            invalid |= ~is_int.to_numpy(zero_copy_only=False)
            return pc.cast(pc.if_else(invalid, "0", digits), pa.int64()).to_numpy(), None, invalid, strays
        names = pc.unique(text.filter(pa.array(~invalid)))
        sorted_names = names.take(pc.array_sort_indices(names))
        codes = pc.index_in(text, value_set=sorted_names).fill_null(0)
        names = np.asarray(sorted_names.to_pylist(), dtype=object)
        return codes.cast(pa.int64()).to_numpy(), names, invalid, strays
    raise TypeError(f"{what} column has unsupported type {col.type}")


def _padded(text: pa.ChunkedArray) -> bool:
    """Whether any integer text is not in the number's own form ("000005", "-05", "-0"); prefix tests, no regex."""
    zero = pc.and_(pc.starts_with(text, "0"), pc.greater(pc.binary_length(text), 1))
    return bool(pc.any(pc.or_(zero, pc.starts_with(text, "-0"))).as_py())


def _fits_int64(digits: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whether each integer text (``-?\\d+``) fits in int64; a longer id is a string id or a bad row."""
    magnitude = pc.utf8_ltrim(digits, characters="-")
    n = pc.utf8_length(magnitude)
    too_big = pc.or_(pc.greater(n, 19), pc.and_(pc.equal(n, 19), pc.greater(magnitude, "9223372036854775807")))
    return pc.invert(pc.fill_null(too_big, False))


def time_seconds(text: str) -> int:
    """One time as a text time column is read: integer unix seconds, or ISO 8601 (UTC unless it has an offset)."""
    try:
        return int(text)
    except ValueError:
        seconds = _iso_seconds(pa.chunked_array([[text]]))[0].as_py()
    if seconds is None:
        raise ValueError(f"expected unix seconds or ISO 8601, got {text!r}")
    return seconds


def _iso_seconds(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 text (``T`` or space, seconds and fraction optional, ``Z`` or a ``+hh:mm``/``-hhmm`` offset,
    or a bare date) to int64 UTC seconds, null if bad."""
    offset = pc.extract_regex(text, r"(?P<sign>[+-])(?P<hh>\d{2}):?(?P<mm>\d{2})$")  # null without one
    hours, minutes = (pc.cast(pc.struct_field(offset, f), pa.int64()) for f in ("hh", "mm"))
    east = pc.multiply(pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)),
                       pc.if_else(pc.equal(pc.struct_field(offset, "sign"), "-"), -1, 1))  # fmt: skip
    text = pc.replace_substring_regex(text, r"(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$", "")
    text = pc.replace_substring_regex(text, r"^(\d{4}-\d{2}-\d{2})$", r"\1T00:00:00")
    text = pc.replace_substring_regex(text, r"^(\d{4}-\d{2}-\d{2}) ", r"\1T")
    text = pc.replace_substring_regex(text, r"T(\d{2}:\d{2})$", r"T\1:00")  # hh:mm, as the fast pass accepts
    parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True)
    return pc.subtract(parsed.cast(pa.int64()), pc.fill_null(east, 0))


def _divisors(values: np.ndarray, unit: str) -> np.ndarray | int:
    """Per value, what divides it into seconds: the unit's, or under ``auto`` each number's by its size."""
    if unit != "auto":
        return _UNIT_DIVISORS[unit]
    if len(values) == 0 or values.max() < _AUTO_BOUNDS[-1][0]:
        return 1  # the usual column of seconds: no per-value pass
    return np.select([values >= bound for bound, _ in _AUTO_BOUNDS], [d for _, d in _AUTO_BOUNDS], 1)


def _times(col: pa.ChunkedArray, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(int64 unix seconds, invalid mask, fraction of the second): nulls, NaN, unparsable text and negative times
    are invalid. The fraction (float64, in [0, 1)) orders times within a second; it is None when no time has one.
    ``auto`` decides per value (a number by its size, text as ISO 8601), so one odd row never changes the rest."""
    fraction = None
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        if unit in _UNIT_DIVISORS:
            raise ValueError(
                f"time_unit={unit!r} but the time column holds dates/timestamps; use 'auto' or 'iso'"
            )
        # safe=False floors sub-second precision instead of refusing to lose it
        secs = col.cast(pa.timestamp("s", tz=getattr(col.type, "tz", None)), safe=False).cast(pa.int64())
        per_second = _UNIT_DIVISORS.get(getattr(col.type, "unit", "s"), 1)
        if per_second > 1:
            fraction = _fraction(np.mod(_int_values(col.cast(pa.int64()))[0], per_second), per_second)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        numeric = pc.fill_null(pc.match_substring_regex(text, _NUM_RE), False)
        if unit == "iso" or (unit == "auto" and not pc.any(numeric).as_py()):
            secs, fraction = _iso_seconds(text), _iso_fraction(text)
        else:
            values, invalid, fraction = _times(pc.cast(pc.if_else(numeric, text, None), pa.float64()), unit)
            whole = pc.fill_null(pc.match_substring_regex(text, r"^\d{1,19}$"), False)
            whole = pc.and_(whole, _fits_int64(text))
            if pc.any(whole).as_py():  # exactly: float64 rounds nanosecond times across a second
                exact, _, exact_fraction = _times(pc.cast(pc.if_else(whole, text, "0"), pa.int64()), unit)
                whole = whole.to_numpy(zero_copy_only=False)
                values, fraction = np.where(whole, exact, values), _either(whole, exact_fraction, fraction)
            if unit != "auto" or pc.all(numeric).as_py():
                return values, invalid, fraction  # a declared unit: text that is not a number is a bad row
            iso, iso_invalid, iso_fraction = _times(text, "iso")
            numeric = numeric.to_numpy(zero_copy_only=False)
            return (np.where(numeric, values, iso), np.where(numeric, invalid, iso_invalid),
                    _either(numeric, fraction, iso_fraction))  # fmt: skip
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        if unit == "iso":
            raise ValueError("time_unit='iso' but the time column is numeric")
        if pa.types.is_integer(col.type):
            values, invalid = _int_values(col)
            invalid |= values < 0
            divisor = _divisors(values, unit)
            if np.isscalar(divisor) and divisor == 1:
                return values, invalid, None
            secs, remainder = np.divmod(values, divisor)
            return secs, invalid, _fraction(remainder, divisor)
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        invalid = ~np.isfinite(values) | (values < 0)
        values = np.where(invalid, 0, values)
        seconds = values / _divisors(values, unit)
        secs = np.floor(seconds)
        invalid |= secs >= 2.0**63  # beyond int64 even in nanoseconds
        fraction = seconds - secs  # 0 where invalid: those are 0, or too big to have a fraction
        return np.where(invalid, 0, secs).astype(np.int64), invalid, fraction if fraction.any() else None
    else:
        raise TypeError(f"time column has unsupported type {col.type}")
    values, invalid = _int_values(secs)
    invalid |= values < 0
    return values, invalid, fraction


def _fraction(remainder: np.ndarray, divisor: np.ndarray | int) -> np.ndarray | None:
    """``remainder / divisor``, the fraction of a second, or None when every remainder is 0 (whole seconds)."""
    return remainder / divisor if remainder.any() else None


def _iso_fraction(text: pa.ChunkedArray) -> np.ndarray | None:
    """The fraction of a second of each ISO 8601 text (``.45`` of ``...:05.450Z``), None when none has one."""
    if not pc.any(pc.match_substring_regex(text, r"\.\d*[1-9]")).as_py():
        return None
    digits = pc.struct_field(pc.extract_regex(text, r"\.(?P<digits>\d+)"), "digits")  # null without a fraction
    fraction = pc.cast(pc.binary_join_element_wise("0.", digits, ""), pa.float64())
    return pc.fill_null(fraction, 0.0).to_numpy(zero_copy_only=False)


def _either(choose: np.ndarray, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """``np.where(choose, a, b)`` for fractions of a second, None standing for all zeros."""
    if a is None and b is None:
        return None
    return np.where(choose, 0.0 if a is None else a, 0.0 if b is None else b)


def _blank_rows(path: Path, table: pa.Table, first_data_line: int, skipped: list[int]) -> np.ndarray:
    """Rows of the text pass that are blank lines, ignored as the fast pass ignores them. A row of empty
    fields (``,,``) reads the same, so the line itself decides: that one is a bad row."""
    if table.num_rows == 0 or not all(pa.types.is_string(t) for t in table.schema.types):
        return np.zeros(table.num_rows, dtype=bool)
    empty = pc.is_null(table.column(0))  # the text pass reads "" as null
    for col in table.columns[1:]:
        empty = pc.and_(empty, pc.is_null(col))
    blank = empty.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(blank)
    if len(rows):
        blank[rows] = _empty_lines(path, _line_numbers(rows, first_data_line, skipped))
    return blank


def _empty_lines(path: Path, lines: np.ndarray) -> np.ndarray:
    """Whether each of the ascending 1-based ``lines`` of ``path`` is empty; reads up to the last of them."""
    empty = np.zeros(len(lines), dtype=bool)
    wanted = iter(enumerate(lines.tolist()))
    k, target = next(wanted)
    with io.BufferedReader(_stream(path), 1 << 20) as f:
        for number, line in enumerate(f, 1):
            if number == target:
                empty[k] = not line.rstrip(b"\r\n")
                k, target = next(wanted, (None, None))
                if k is None:
                    break
    return empty


def _line_numbers(rows: np.ndarray, first_data_line: int, skipped: list[int]) -> np.ndarray:
    """Map kept-row indices to physical line numbers, given the lines the parser skipped."""
    skipped_arr = np.sort(np.asarray(skipped, dtype=np.int64))
    lines = first_data_line + rows
    while True:  # each skipped line at or before a row's line pushes it down one line
        moved = first_data_line + rows + np.searchsorted(skipped_arr, lines, side="right")
        if np.array_equal(moved, lines):
            return lines
        lines = moved


def shown_lines(lines, total: int) -> str:
    """The first ``_SHOWN_LINES`` of ``lines`` (line numbers), then ``...`` when ``total`` holds more."""
    return ", ".join(map(str, lines[:_SHOWN_LINES])) + (" ..." if total > _SHOWN_LINES else "")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _fields_problem(row, fmt: str, layout: _Layout) -> str:
    """Why the text pass rejected a whole row (Arrow's ``InvalidRow``)."""
    return (f"{row.actual_columns} field(s) where the {fmt} layout has {row.expected_columns} (separated by "
            f"{layout.sep!r}): {_shown(row.text)}")  # fmt: skip


def _value_problem(
    table: pa.Table,
    roles: dict[str, str],
    causes: dict[str, np.ndarray],
    row: int,
    layout: _Layout,
    unit: str,
    fmt: str,
) -> tuple[str, str]:
    """(role, why) for the first column that makes ``row`` bad, as ``_ids`` and ``_times`` decided."""
    role = next(r for r, mask in causes.items() if mask[row])
    name = roles[role]
    value = table[name][row].as_py()
    if value is None or (isinstance(value, str) and not value.strip()):
        missing = "is null" if fmt == "parquet" else "is empty (or a null token such as NA)"
        return role, f"{role} column {name!r} {missing}"
    if isinstance(value, float) and np.isnan(value):
        why = "is NaN"
    elif role == "time":
        why = _time_problem(value, unit)
    elif isinstance(value, str) and re.match(_INT_RE, value):
        why = "does not fit in a 64-bit integer"
    elif pa.types.is_integer(layout.types.get(name, pa.string())):
        why = f"is not an integer, as the {fmt} format requires"
    else:
        why = "is not an integer, unlike nearly all the column's ids"  # a stray, bad under skip_bad_rows
    return role, f"{role} column {name!r}: {_shown(value)} {why}"


def _time_problem(value, unit: str) -> str:
    if isinstance(value, str):
        text = value.strip()
        if unit == "iso" or not re.match(_NUM_RE, text):
            if unit in _UNIT_DIVISORS:
                return f"is not a number (time_unit={unit!r})"
            seconds = _iso_seconds(pa.chunked_array([[text]]))[0].as_py()
            if seconds is not None and seconds < 0:
                return "is before 1970"
            if unit == "iso":
                return f"is not {_ISO_FORM}"
            return f"is neither a number (unix s/ms/us/ns) nor {_ISO_FORM}"
        value = float(text)
    if isinstance(value, (int, float)):
        return "is negative" if value < 0 else "is out of range"
    return "is before 1970"  # a Parquet date or timestamp


def _first_line_names(path: Path, layout: _Layout, roles: dict[str, str]) -> bool:
    """Whether the file's first line holds the names of the columns read (a header read as data)."""
    fields = {f.strip().strip('"') for f in _first_line(path).split(layout.sep)}
    return set(roles.values()) <= fields


def _format_hint(path: Path, kind: str, roles: dict[str, str], fmt: str) -> str:
    """What to change when nearly every row is bad as the first one is: the format or column, not the rows."""
    looks = _content_format(path)
    fix = f"it looks like {looks}: pass format={looks!r} (--format {looks})" if looks != fmt else ""
    if kind == "fields":
        fix = fix or "pass its format (--format) or sep (--sep)"
        return f"the file does not split into {fmt} rows; {fix}"
    name = roles[kind]
    if kind == "time":
        return (f"the {name!r} column's format is not understood: convert it to unix seconds/ms/us/ns or "
                "ISO 8601, declare the unit of its numbers with time_unit (--time-unit), or pick another "
                "column with time_col (--time-col)")  # fmt: skip
    if kind in ("user", "item", "session"):
        fix = fix or f"pick another column with {kind}_col (--{kind}-col) or check the format (--format)"
    fix = fix or "check the format (--format)"
    return f"the {name!r} column's values are not {kind} ids as the {fmt} format reads them; {fix}"


def read_log(
    path: str | Path,
    format: str | None = None,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    session_col: str | None = None,
    sep: str | None = None,
    time_unit: str = "auto",
    skip_bad_rows: bool = False,
    impressions: str | Path | None = None,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> InteractionLog:
    """Read an interaction file into an :class:`InteractionLog`.

    ``format``: ``xing | csv | parquet | movielens | recbole`` (detected when None).
    ``user_col/item_col/time_col/session_col`` override the format's column names
    (generic CSV/Parquet take the first present of ``COMMON_COLUMNS``, e.g. ``user_id``
    or ``userId``, ``item_id`` or ``movieId``, ``timestamp`` or ``created_at``); names
    match the file's with surrounding spaces trimmed (``user_id, item_id``);
    ``sep`` overrides the delimiter (one character, or ``tab``/``\\t`` for a tab;
    CSV sniffs tab vs comma).
    ``time_unit``: ``auto`` decides per value: a number is unix seconds below
    1e11, milliseconds from 1e11, microseconds from 1e14 and nanoseconds from
    1e17 (each bound is past the year 5138 in the smaller unit), and text is ISO
    8601; ``s``, ``ms``, ``us``, ``ns`` or ``iso`` declare one unit for every row.
    Times become int64 unix seconds, floored. When some time has a fraction of a
    second, the rows that share a second are put in the order of their fractions,
    in the places those rows held (every other row keeps its place in the file),
    so that the packer, which orders by seconds stably, packs them in time order.
    ``skip_bad_rows``: drop unparsable rows instead of raising (their line
    numbers land in ``skipped_lines``). A missing id, session or time (an empty
    field, or one of Arrow's null tokens ``NA``, ``NaN``, ``null``, ...) makes a
    row bad; blank lines are ignored. Ids are integers when every one is, written
    as the number is (``-5``, ``7.0``; a ``000005`` or ``-0`` would merge with
    ``5`` or ``0``), else strings, as written (except in XING, whose ids are
    integers). A column whose non-integer ids are at most 1% of its ids
    (``_STRAY_SHARE``) is read as strings with a warning naming the first; with ``skip_bad_rows`` those rows are bad instead
    (likely typos) and the ids stay integers. ``impressions``: a XING impressions
    file to attach. ``column_names``: a CSV/TSV file without a header line, its columns' names in order
    (e.g. ``["user_id", "item_id", "rating", "timestamp"]``; the roles are then found by those names as for a
    header). Files ending in ``.gz``, ``.bz2``, ``.zst`` or ``.lz4`` are
    decompressed as they are read, and named as without that suffix; one that is
    not a valid such file (or is cut short) is a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")
    sep = _SEP_NAMES.get(sep, sep)
    if sep is not None and len(sep) != 1:
        raise ValueError(f"sep must be a single character, got {sep!r}")
    fmt = format or detect_format(path)
    layout = _layout(path, fmt, sep)
    if sep is not None:
        layout = replace(layout, sep=sep)
    present = _file_columns(path, fmt, layout)
    if column_names is not None:  # the "header" just read is the first row of data
        layout = _headerless(path, fmt, layout, column_names, present)
        present = layout.column_names
    # A header "user_id, item_id" names " item_id": match names trimmed, read the column by the file's name.
    found = {name: name for name in present}
    for name in present:
        found.setdefault(name.strip(), name)
    roles = dict(layout.columns)
    if fmt in ("csv", "parquet"):
        for role, candidates in COMMON_COLUMNS.items():
            roles[role] = next((c for c in candidates if c in found), candidates[0])
    given = {"user": user_col, "item": item_col, "time": time_col, "session": session_col}
    roles.update({role: name for role, name in given.items() if name is not None})
    columns = {role: found.get(name, found.get(name.strip())) for role, name in roles.items()}
    missing = [f"{role}_col={roles[role]!r}" for role, name in columns.items() if name is None]
    if missing:
        hint = ""
        if column_names is None and layout.column_names is None and any(
            re.match(_NUM_RE, n) or re.match(_ISO_DATE_RE, n) for n in present
        ):
            hint = ("; its first line looks like data, not a header: name the columns with column_names "
                    "(--column-names user_id,item_id,...)")  # fmt: skip
        elif len(present) == 1 and fmt == "csv" and (other := next((c for c in ";|," if c in present[0]), None)):
            hint = f"; it looks {other!r}-separated: pass sep={other!r} (--sep {other!r})"
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the file has columns {present}{hint}")
    roles = columns
    unit = layout.time_unit if time_unit == "auto" else time_unit
    names = list(dict.fromkeys(roles.values()))
    if fmt != "parquet":
        # Arrow would infer int64 from "000005", merging it with "5": _ids decides from the text. As bytes, so
        # that text that is not UTF-8 is still named by its column (Arrow types it binary when it infers).
        ids = {roles[role]: pa.binary() for role in ("user", "item", "session") if role in roles}
        layout = replace(layout, types={**ids, **layout.types})
    first_data_line = 1 + (layout.column_names is None) + layout.skip_rows

    bad_lines: list[int] = []
    first_bad: list = []
    try:
        table = _read_table(path, fmt, layout, names, as_text=False, bad_lines=bad_lines)
        if table.num_rows == 0:
            raise ValueError(f"{path} has no data rows")
        table, binary = _decoded(table) if fmt != "parquet" else (table, [])
        if binary:  # Arrow's CSV reader types text that is not UTF-8 as binary
            raise ValueError(f"{path}: column(s) {binary} are not UTF-8 text; re-encode the file as UTF-8 "
                             "(e.g. iconv -f latin1 -t utf-8)")  # fmt: skip
        log, invalid, causes, strays, fraction = _convert(
            table, roles, layout, unit, text_pass=fmt != "parquet", strays_bad=skip_bad_rows
        )
        if invalid.any() or (strays and fmt != "parquet"):  # the text pass locates them by line
            raise _Retry
    except (_Retry, pa.ArrowInvalid) as exc:
        if fmt == "parquet" and not isinstance(exc, _Retry):
            raise ValueError(f"{path}: {exc}") from exc
        bad_lines = []
        if fmt != "parquet":
            try:
                table = _read_table(
                    path, fmt, layout, names, as_text=True, bad_lines=bad_lines, first_bad=first_bad
                )
            except pa.ArrowInvalid as unreadable:  # e.g. an unterminated quote: no row structure left
                hint = "; the file is not UTF-8 text: re-encode it" if "UTF8" in str(unreadable) else ""
                raise ValueError(f"{path}: cannot parse as {fmt} ({unreadable}){hint}") from unreadable
        log, invalid, causes, strays, fraction = (
            _convert(table, roles, layout, unit, strays_bad=skip_bad_rows)
            if table.num_rows
            else (None, np.zeros(0, bool), {}, {}, None)
        )
    blank = (
        _blank_rows(path, table, first_data_line, bad_lines)
        if fmt != "parquet"
        else np.zeros(len(invalid), dtype=bool)
    )
    where = "row" if fmt == "parquet" else "line"

    def line_of(rows: np.ndarray) -> np.ndarray:
        return rows + 1 if fmt == "parquet" else _line_numbers(rows, first_data_line, bad_lines)

    rows = np.flatnonzero(invalid & ~blank)
    bad = np.sort(np.concatenate([np.asarray(bad_lines, dtype=np.int64), line_of(rows)]))
    n_rows = len(bad) + int((~invalid).sum())
    mostly_bad = len(bad) >= _MOSTLY_BAD * n_rows
    if len(bad) and (not skip_bad_rows or log is None or invalid.all()):
        shown = shown_lines(bad, len(bad))
        if first_bad and (not len(rows) or first_bad[0].number < line_of(rows[:1])[0]):
            kind, why = "fields", _fields_problem(first_bad[0], fmt, layout)
        else:
            kind, why = _value_problem(table, roles, causes, int(rows[0]), layout, unit, fmt)
        head = f"{len(bad)} bad row(s) at {where}(s) {shown}; {where} {bad[0]}: {why}"
        if not mostly_bad:
            skip = "pass skip_bad_rows=True (--skip-bad-rows) to drop and count them"
            if column_names is not None and bad[0] == 1 and _first_line_names(path, layout, roles):
                skip = "line 1 holds the column names: the file has a header, so drop column_names (--column-names)"
            raise BadRowsError(f"{path}: {head}; {skip}")
        every = "every row is bad" if log is None or invalid.all() else "nearly every row is bad"
        raise BadRowsError(f"{path}: {every}: {head}; {_format_hint(path, kind, roles, fmt)}")
    if log is None or invalid.all():  # nothing but blank lines
        raise ValueError(f"{path} has no data rows")
    if invalid.any():
        log = log.select(~invalid)
        fraction = None if fraction is None else fraction[~invalid]
    if fraction is not None:
        log = _sub_second_order(log, fraction)
    log = replace(log, skipped_lines=bad)
    for role, stray in strays.items():
        row = int(np.argmax(stray))
        n, n_ids = int(stray.sum()), len(stray) - int(causes[role].sum())
        value = table[roles[role]][row].as_py()
        are = "is" if n == 1 else "are"
        warnings.warn(
            f"{path}: {role} column {roles[role]!r}: {n:,} of {n_ids:,} ids {are} not an integer "
            f"({where} {line_of(np.array([row]))[0]}: {_shown(value)}); all ids are read as strings. Fix the "
            "row(s), or drop them with skip_bad_rows=True (--skip-bad-rows) if you treat them as bad",
            stacklevel=2,
        )
    late = int((log.timestamp >= _YEAR_2100).sum())
    if late:  # e.g. milliseconds declared as seconds: every event lands in its own session, centuries apart
        warnings.warn(
            f"{path}: {late:,} of {len(log):,} times fall after the year 2100 (the latest: "
            f"{int(log.timestamp.max())} s); check the time unit (time_unit / --time-unit: {time_unit})",
            stacklevel=2,
        )
    if impressions is not None:
        log = replace(log, impressions=read_impressions(impressions))
    return log


def _sub_second_order(log: InteractionLog, fraction: np.ndarray) -> InteractionLog:
    """``log`` with the rows that share a second put in the order of their ``fraction`` of it, in the places
    those rows held; every other row stays where it was. The stable packer sees only seconds, so it then
    orders a user's events within a second by their true time, not by where the file wrote them."""
    by_second = np.argsort(log.timestamp, kind="stable")  # timsort: near linear on a file sorted by time
    seconds, fraction = log.timestamp[by_second], fraction[by_second]
    same = seconds[1:] == seconds[:-1]
    shared = np.zeros(len(seconds), dtype=bool)  # only rows of a second that holds others can move
    shared[1:] = same
    shared[:-1] |= same
    places = np.flatnonzero(shared)
    rows = by_second.copy()  # rows[k]: the row for the k-th place in second order
    rows[places] = by_second[places[np.lexsort((fraction[places], seconds[places]))]]
    order = np.empty_like(by_second)
    order[by_second] = rows
    return log.take(order)


def _convert(
    table: pa.Table,
    roles: dict[str, str],
    layout: _Layout,
    unit: str,
    text_pass: bool = False,
    strays_bad: bool = False,
) -> tuple[InteractionLog | None, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Columns to numpy: (log, invalid, invalid mask per role, strays per role; see ``_ids``, fractions of the
    second; see ``_times``). Invalid rows get placeholder values; the caller drops or reports them.
    ``text_pass``: raise ``_Retry`` where only the text pass reads the ids exactly."""
    causes, strays = {}, {}

    def ids(role):
        name = roles[role]
        integer = pa.types.is_integer(layout.types.get(name, pa.string()))
        values, names, causes[role], stray = _ids(table[name], role, integer, text_pass, strays_bad)
        if stray is not None and names is not None:  # read as strings: read_log warns
            strays[role] = stray
        return values, names

    user, user_names = ids("user")
    item, item_names = ids("item")
    timestamp, causes["time"], fraction = _times(table[roles["time"]], unit)
    session = itype = None
    if "session" in roles:
        session, _ = ids("session")
    if "type" in roles:
        itype = ids("type")[0].astype(np.int8)
    invalid = np.logical_or.reduce(list(causes.values()))
    if invalid.all():  # keep the log constructible; read_log reports the rows
        return None, invalid, causes, strays, None
    log = InteractionLog(
        user=user,
        item=item,
        timestamp=np.where(invalid, 0, timestamp),
        session=session,
        interaction_type=itype,
        user_names=user_names,
        item_names=item_names,
    )
    return log, invalid, causes, strays, fraction


def read_impressions(path: str | Path) -> Impressions:
    """Read a XING ``impressions.csv`` (``user_id year week items``, items comma-separated)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ValueError(f"impressions path {path} is missing or empty")
    header = _first_line(path).split("\t")
    if header != XING_IMPRESSIONS_HEADER:
        raise ValueError(f"{path}: expected header {XING_IMPRESSIONS_HEADER}, got {header}")
    layout = _Layout(
        sep="\t",
        columns={},
        types={"user_id": pa.int64(), "year": pa.int64(), "week": pa.int64(), "items": pa.string()},
    )
    try:
        table = _read_table(path, "csv", layout, XING_IMPRESSIONS_HEADER, as_text=False, bad_lines=[])
    except (_Retry, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: unparsable impressions file ({exc})") from exc
    lists = pc.split_pattern(table["items"].combine_chunks(), ",")
    try:
        items = pc.cast(pc.utf8_trim_whitespace(pc.list_flatten(lists)), pa.int64()).to_numpy()
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: an items list holds something other than comma-separated item ids ({exc})") from None
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    return Impressions(
        user=table["user_id"].to_numpy().astype(np.int64),
        year=table["year"].to_numpy().astype(np.int64),
        week=table["week"].to_numpy().astype(np.int64),
        item_ptr=offsets,
        items=items,
    )
