"""Input documents as a Ray Dataset of (id, text), read from text, JSONL or Parquet files."""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import FileBasedDatasource

Format = Literal["text", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("text", "jsonl", "parquet")
_SUFFIXES: dict[str, Format] = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
# Reading is light next to embedding; reserving no CPU for it keeps one embedding actor per
# core without starving the readers (an actor pool holding every CPU would block them).
READ_CPUS = 0


class InputError(ValueError):
    """Inputs that cannot be indexed as asked; the message is one line."""


def extensions(fmt: Format) -> list[str]:
    """The file names read from a folder of this format (as Ray matches them: no dot)."""
    plain = [ext.lstrip(".") for ext, f in _SUFFIXES.items() if f == fmt]
    return plain + [f"{ext}{c}" for ext in plain for c in _COMPRESSED if fmt != "parquet"]


def detect_format(paths: Sequence[str]) -> Format:
    """The format the file names say; folders and unknown suffixes need --format."""
    found = set()
    for path in paths:
        name = Path(path).name.lower()
        for ext in _COMPRESSED:
            name = name.removesuffix(ext)
        fmt = _SUFFIXES.get(Path(name).suffix)
        if fmt is None:
            raise InputError(f"{path}: cannot tell the format from the name; pass --format")
        found.add(fmt)
    if len(found) != 1:
        raise InputError(f"inputs mix formats ({', '.join(sorted(found))}); index them apart")
    return found.pop()


def join_fields(values: Sequence[str | None]) -> str:
    """Several text fields make one text: the non-empty ones joined by a space."""
    return " ".join(v for v in values if v)


def _text_column(batch: pa.Table, field: str) -> pa.ChunkedArray:
    try:
        return batch.column(field).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"field {field!r} is not text ({batch.schema.field(field).type})") from exc


def to_documents(batch: pa.Table, id_field: str, text_fields: Sequence[str]) -> pa.Table:
    """(id, text) columns; several text fields join as `join_fields` joins them, row by row."""
    ids = batch.column(id_field)
    if ids.null_count:
        raise InputError(f"{ids.null_count} documents have no {id_field!r}")
    if not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)):
        if pa.types.is_large_string(ids.type):
            ids = ids.cast(pa.string())
        else:
            raise InputError(f"{id_field!r} must be a string or an integer, not {ids.type}")
    empty = pa.scalar(None, pa.string())
    text = None
    for field in text_fields:
        column = _text_column(batch, field)
        column = pc.if_else(pc.equal(column, ""), empty, column)  # "" counts as missing
        if text is None:
            text = column
        else:
            # Not null_handling="skip": pyarrow 26 drops the rows where every value is null,
            # which would shift every later text onto the previous id.
            both = pc.binary_join_element_wise(text, column, " ", null_handling="emit_null")
            text = pc.coalesce(both, text, column)
    return pa.table({"id": ids, "text": text.fill_null("")})


class NumberedTextDatasource(FileBasedDatasource):
    """One document per non-blank line; its id is the line number (1-based, as editors count).

    With several files the id is "<file name>:<line>", so ids stay unique and stable.
    """

    def __init__(self, paths: list[str], *, qualify: bool, **kwargs):
        super().__init__(paths, **kwargs)
        self.qualify = qualify

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        name = posixpath.basename(path) if self.qualify else None
        yield numbered_lines(f.readall(), name)


class ParquetColumnsDatasource(FileBasedDatasource):
    """Only the named columns of Parquet files, row group after row group.

    Not `ray.data.read_parquet`: in Ray 2.60 it hands a whole file (up to 128 MiB) to one
    task as one block, so a corpus in one file keeps one actor busy and the rest idle, and
    nothing is written before all of it is embedded. This one takes the path JSON and text
    take, whose blocks Ray splits to keep every actor busy.
    """

    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, paths: list[str], *, columns: list[str], **kwargs):
        super().__init__(paths, **kwargs)
        self.columns = columns
        self.fields = (columns[0], columns[1:])

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        return filesystem.open_input_file(path)  # Parquet reads its footer first

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        parquet = pq.ParquetFile(f)
        for group in range(parquet.num_row_groups):
            yield to_documents(parquet.read_row_group(group, columns=self.columns), *self.fields)


class JsonLinesDatasource(FileBasedDatasource):
    """JSON Lines, parsed by Arrow a chunk of whole lines at a time, as the file streams in.

    Not `ray.data.read_json`: in Ray 2.60 it decompresses and parses a whole file before its
    first block goes out, so on a single big file the embedding actors sat idle for the whole
    read (measured: the largest gap between the indexer and the embedding code alone). Here
    blocks leave as soon as CHUNK_BYTES of lines are parsed, and the read overlaps the
    embedding.
    """

    _FILE_EXTENSIONS = extensions("jsonl")
    CHUNK_BYTES = 8 << 20

    def __init__(
        self,
        paths: list[str],
        *,
        parse_options: pajson.ParseOptions,
        fields: tuple[str, Sequence[str]] | None = None,
        **kwargs,
    ):
        super().__init__(paths, **kwargs)
        self.parse_options = parse_options
        # (id field, text fields): yield (id, text) documents instead of the parsed records.
        self.fields = fields

    def _parse(self, data: bytes, path: str) -> pa.Table:
        # One Arrow block for the whole chunk: a line longer than Arrow's default 1 MiB block
        # cannot straddle two.
        options = pajson.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20))
        try:
            table = pajson.read_json(pa.BufferReader(data), options, self.parse_options)
        except pa.ArrowInvalid as exc:
            raise InputError(f"{path}: {exc}".splitlines()[0]) from None
        return table if self.fields is None else to_documents(table, *self.fields)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rest = b""
        while chunk := f.read(self.CHUNK_BYTES):
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            if end == 0:  # no whole line yet
                rest = data
                continue
            rest = data[end:]
            yield self._parse(data[:end], path)
        if rest.strip():
            yield self._parse(rest, path)


def numbered_lines(data: bytes, name: str | None = None) -> pa.Table:
    """(id, text) for each non-blank line; id = line number, or "<name>:<number>" with a name."""
    # split("\n"), not splitlines(): the latter also breaks on \x0c, \u2028 ... and would
    # number lines differently from every other tool.
    lines = data.decode("utf-8", errors="replace").split("\n")
    ids: list[int | str] = []
    texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if line.strip():
            ids.append(number if name is None else f"{name}:{number}")
            texts.append(line)
    id_type = pa.int64() if name is None else pa.string()
    return pa.table({"id": pa.array(ids, id_type), "text": pa.array(texts, pa.string())})


def first_record(path: Path, fmt: Format) -> dict:
    """The first record (JSONL) or the schema's fields (Parquet, values None), read on the
    driver: cheap, one line or a footer."""
    if path.is_dir():
        names = tuple(f".{ext}" for ext in extensions(fmt))
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(names)
        )
        if not files:
            raise InputError(f"{path}: no {fmt} files ({', '.join(names)})")
        path = files[0]
    if fmt == "parquet":
        return dict.fromkeys(pq.read_schema(path).names)
    with pa.input_stream(str(path), compression="detect") as stream:
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: first line is not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}: records must be JSON objects")
                return record
    raise InputError(f"{path}: no records")


def check_fields(path: Path, fmt: Format, fields: Sequence[str]) -> dict:
    record = first_record(path, fmt)
    missing = [f for f in fields if f not in record]
    if missing:
        raise InputError(
            f"{path}: no field {missing[0]!r} (fields: {', '.join(record) or 'none'}); "
            "choose them with --id-field / --text-field"
        )
    return record


_JSON_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def json_schema(record: dict, id_field: str, text_fields: Sequence[str]) -> pa.Schema:
    """Only the fields we index, typed as the first record has them: Arrow's reader then skips
    the others (BEIR's nested `metadata` cost as much to parse as all the text)."""
    value = record[id_field]
    if type(value) not in (str, int):
        raise InputError(f"{id_field!r} must be a string or an integer, not {value!r}")
    columns = [(id_field, _JSON_TYPES[type(value)])]
    for field in text_fields:
        value = record[field]
        if value is not None and type(value) not in _JSON_TYPES:
            raise InputError(f"field {field!r} is not text ({type(value).__name__})")
        columns.append((field, pa.string() if value is None else _JSON_TYPES[type(value)]))
    return pa.schema(columns)


def read_documents(
    paths: Sequence[str],
    fmt: Format,
    id_field: str = "id",
    text_fields: Sequence[str] = ("text",),
    *,
    check_only: bool = False,
) -> ray.data.Dataset | None:
    """A dataset with columns `id` and `text`, one row per document.

    The inputs are checked here, on the driver (they exist, the fields are there), so that
    mistakes fail at once with one line; with `check_only` nothing else happens.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
    if not text_fields:
        raise InputError("no text field given")
    paths = [str(Path(p).resolve()) for p in paths]
    for path in paths:
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    folders = any(Path(p).is_dir() for p in paths)
    if fmt == "text":
        qualify = len(paths) > 1 or folders
        if qualify:
            names = [Path(p).name for p in paths if Path(p).is_file()]
            if len(names) != len(set(names)):
                raise InputError("text inputs share a file name, so their ids would collide")
        if check_only:
            return None
        return ray.data.read_datasource(
            NumberedTextDatasource(
                paths, qualify=qualify, file_extensions=extensions("text") if folders else None
            ),
            num_cpus=READ_CPUS,
        )
    fields = [id_field, *text_fields]
    if len(set(fields)) != len(fields):
        raise InputError(f"a field is named twice ({', '.join(fields)})")
    records = [check_fields(Path(path), fmt, fields) for path in paths]
    if fmt == "jsonl":
        schema = json_schema(records[0], id_field, text_fields)
    if check_only:
        return None
    # Files named on the command line are read whatever their suffix; folders keep Ray's
    # suffix filter, so a README next to the data is not read as data.
    suffixes = {"file_extensions": extensions(fmt) if folders else None}
    # The readers make the (id, text) columns themselves: as a map_batches step, Ray fused it
    # into the embedding actors, which then spent on joining fields what they owe to embedding.
    if fmt == "jsonl":
        # Arrow's reader keeps types (Ray's pandas route, lines=True, turns an id like "0042"
        # into the number 42).
        options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        source = JsonLinesDatasource(
            paths, parse_options=options, fields=(id_field, list(text_fields)), **suffixes
        )
    else:
        source = ParquetColumnsDatasource(paths, columns=fields, **suffixes)
    return ray.data.read_datasource(source, num_cpus=READ_CPUS)
