"""Reading source objects into records, and the contract's rules for bad input (sections 2-4).

Reads raw bytes of NDJSON or JSON-array objects (gzip when the name ends in `.gz`); writes
nothing. Yields one `Line` per non-blank line or array element: either a valid record or a
reject with its reason. The loader decides where each line goes; this module only judges it.
"""

import datetime
import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

UTC = datetime.timezone.utc
BOM = b"\xef\xbb\xbf"

EVENT_REQUIRED = ("id", "event_type", "user_id", "received_at")
ORGANIZATION_REQUIRED = ("organization_key",)

# ISO-8601 extended calendar form only: Python's fromisoformat alone also takes week dates,
# the basic form and any separator character, which a warehouse user would not call ISO.
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


class SourceError(Exception):
    """The object as a whole cannot be read: the task fails and loads nothing."""


@dataclass
class Line:
    line_number: int
    raw: bytes
    text: Optional[str] = None  # the JSON text to store, when valid
    record: Optional[dict] = None
    reason: Optional[str] = None  # why it is rejected, when it is
    received_at: Optional[datetime.datetime] = None  # in UTC, whenever it can be read

    @property
    def is_valid(self) -> bool:
        return self.reason is None


def parse_timestamp(value) -> Optional[datetime.datetime]:
    """An ISO-8601 string as an aware UTC datetime (no offset means UTC); None if unreadable."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _reject_constant(name):
    raise ValueError(f"{name} is not strict JSON")


_strict_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _jsonb_problem(value) -> Optional[str]:
    """Why PostgreSQL's jsonb would refuse this value, if it would."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "contains \\u0000, which PostgreSQL jsonb cannot store"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains a lone surrogate escape, which PostgreSQL jsonb cannot store"
    return None


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def judge(line_number: int, raw: bytes, text: Optional[str], required) -> Line:
    """Validate one line (or array element) against the contract's section 4."""
    line = Line(line_number, raw)
    if text is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line.reason = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            return line
    try:
        record = _strict_decoder.decode(text)
    except ValueError as err:
        line.reason = f"not valid JSON: {err}"
        return line
    if not isinstance(record, dict):
        line.reason = f"not a JSON object but {_type_name(record)}"
        return line
    if "received_at" in required:
        # Read the day before judging the rest: a rejected line with a readable day belongs there.
        line.received_at = parse_timestamp(record.get("received_at"))
    line.reason = _jsonb_problem(record)
    if line.reason:
        return line
    for field in required:
        if field not in record:
            line.reason = f"missing required field '{field}'"
            return line
        if not isinstance(record[field], str):
            line.reason = f"field '{field}' must be a string, got {_type_name(record[field])}"
            return line
    if "received_at" in required and line.received_at is None:
        line.reason = f"unparseable received_at {record['received_at']!r}"
        return line
    line.text = text
    line.record = record
    return line


def open_object(path: Path):
    """A binary reader of the object; gzip is undone when the name ends in `.gz`."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_lines(path: Path, required) -> Iterator[Line]:
    """Every non-blank line (NDJSON) or element (JSON array) of the object, judged."""
    try:
        with open_object(path) as stream:
            head = stream.read(len(BOM))
            if head != BOM:
                stream.seek(0)
            first = _first_significant_byte(stream)
            if first == b"[":
                yield from _array_elements(stream.read(), path, required)
                return
            for number, raw in enumerate(stream, start=1):
                raw = raw.rstrip(b"\r\n")
                if raw.strip():
                    yield judge(number, raw, None, required)
    except (EOFError, OSError, zlib.error) as err:
        # gzip raises EOFError on a truncated member and BadGzipFile (an OSError) on garbage.
        raise SourceError(f"{path.name}: cannot read the object ({err}); is the gzip truncated?") from err


def _first_significant_byte(stream) -> bytes:
    """Peek past leading whitespace, leaving the stream where it was."""
    start = stream.tell()
    while True:
        byte = stream.read(1)
        if byte not in (b" ", b"\t", b"\r", b"\n"):
            stream.seek(start)
            return byte


def _array_elements(data: bytes, path: Path, required) -> Iterator[Line]:
    """Elements of a JSON-array object, numbered from 1; the array must parse as a whole."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path.name}: JSON array is not valid UTF-8 ({err})") from err
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"[ \t\r\n]*")
    position = whitespace.match(text, text.index("[") + 1).end()
    elements = []
    try:
        if text[position : position + 1] != "]":
            while True:
                # raw_decode accepts NaN; judge() re-reads each element strictly, element by element.
                _, end = decoder.raw_decode(text, position)
                elements.append(text[position:end])
                position = whitespace.match(text, end).end()
                if text[position : position + 1] == ",":
                    position = whitespace.match(text, position + 1).end()
                    continue
                if text[position : position + 1] == "]":
                    break
                raise ValueError(f"expected ',' or ']' at character {position}")
        if text[whitespace.match(text, position + 1).end() :]:
            raise ValueError(f"unexpected data after the array at character {position + 1}")
    except ValueError as err:
        raise SourceError(f"{path.name}: the JSON array does not parse as a whole ({err})") from err
    for number, element in enumerate(elements, start=1):
        yield judge(number, element.encode("utf-8"), element, required)
