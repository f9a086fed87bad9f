"""Reading source objects into judged lines: the contract's rules for records and bad input (sections 2-4).

Reads a binary stream of an NDJSON or JSON-array object (gzip when the name ends in `.gz`); writes
nothing. Yields one `Line` per non-blank line or array element: a valid record, or a reject with
its reason. Every line is judged here, before it reaches COPY, so that no line's content can fail
a load: every exception of the decoder and of the checks becomes a reason. The loader decides where
each line goes; this module only judges it.

The common line (a flat-enough event with a received_at in the usual shape) is judged on a fast
path (`_judge_block`) that does per line only what orjson and a few dict look-ups do; every other
line goes through `judge`, the one place that words a reject reason. The fast path accepts only
lines that `judge` would accept, with the same received_at.
"""

import datetime
import decimal
import gzip
import itertools
import json
import re
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import orjson

UTC = datetime.UTC
BOM = b"\xef\xbb\xbf"
JSON_WHITESPACE = b" \t\r\n"  # only these make a line blank: \x0b or \x0c are content, hence rejects
# Source bytes read at a time; each read becomes one block of lines and, in the loader, one COPY
# message of about 1.5 times its size. Small enough that COPY data stays well within the socket's
# buffer, so the server works on one block while this process judges the next (measured on 1M
# events: 32-64 KB best, 128 KB 5% slower, 256 KB 1.8 times slower, the two waiting for each other
# in turns); large enough that per-block costs are nothing.
CHUNK = 1 << 15
# received_at as PostgreSQL stores a timestamptz: microseconds since this instant.
PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

EVENT_REQUIRED = ("id", "event_type", "user_id", "received_at")
ORGANIZATION_REQUIRED = ("organization_key",)

# jsonb's limits (PostgreSQL's numeric and varlena formats): what cannot be stored is a reject.
NUMERIC_MAX_DSCALE = 16383  # digits after the decimal point
NUMERIC_MAX_DWEIGHT = 131071  # position of the first significant digit before the decimal point
NUMERIC_MAX_EXPONENT = 2**30 - 1
MAX_LINE_BYTES = (1 << 28) - 1  # a jsonb value holds at most 2^28 - 1 bytes

# ISO-8601 extended calendar form only: Python's fromisoformat alone also takes week dates,
# the basic form and any separator character, which a warehouse user would not call ISO.
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
# A number that might exceed numeric's range: a 5-digit exponent or a 6,000-digit run. Only lines
# with one get the exact (slower) check; the pattern may also match inside strings, which is fine.
_RISKY_NUMBER = re.compile(rb"[eE][+-]?[0-9]{5}|[0-9]{6000}")
_TOKEN = re.compile(rb'"(?:[^"\\]+|\\.)*"|(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)')
_NUMBER = re.compile(rb"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")


class SourceError(Exception):
    """The object as a whole cannot be read: the task fails with this message and loads nothing."""


class Line(NamedTuple):
    """One judged line: `record` when valid, `reason` when rejected; `instant` and `day` when its
    received_at can be read. A tuple, because the fast path builds one per line: a class with an
    __init__ cost four times as much, a sixth of the time a line took."""

    number: int
    raw: bytes
    record: object = None
    reason: str | None = None
    instant: int | None = None  # received_at in microseconds since PG_EPOCH, what COPY writes
    day: datetime.date | None = None  # UTC day of received_at

    @property
    def is_valid(self) -> bool:
        return self.reason is None

    @property
    def received_at(self) -> datetime.datetime | None:
        """Aware UTC datetime, whenever received_at can be read."""
        return None if self.instant is None else PG_EPOCH + self.instant * _MICROSECOND


_new_line = tuple.__new__  # Line from a tuple of all its fields, without NamedTuple's Python __new__


def _line(number: int, raw: bytes, record=None, reason=None, received_at=None) -> Line:
    if received_at is None:
        return Line(number, raw, record, reason)
    return Line(number, raw, record, reason, (received_at - PG_EPOCH) // _MICROSECOND, received_at.date())


def parse_timestamp(value) -> datetime.datetime | None:
    """An ISO-8601 string as an aware UTC datetime (no offset means UTC); None if unreadable.

    Raises OverflowError when the instant has no UTC representation (year 1 or 9999 at the edge).
    """
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# The usual received_at, YYYY-MM-DD?HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM], read with look-ups instead of
# datetime: value[16:19] is ":SS", value[19:] the fraction and zone (the "tail"), and the minute,
# value[:16] with its zone, is read by parse_timestamp as "minute:00zone" once and remembered.
# Zones are whole minutes, so seconds never move the UTC minute: the instant is the minute's plus
# the seconds and fraction, the day is the minute's, and a minute in range keeps its seconds in range.
_SECONDS = {f":{second:02d}": second * 1_000_000 for second in range(60)}
_ZONE = re.compile(r"Z|[+-][0-9]{2}:[0-9]{2}|")
_tails = {}  # tail -> (zone, microseconds of the fraction)
_minutes = {}  # minute + zone -> (microseconds since PG_EPOCH, UTC day)
CACHE_SIZE = 1 << 16  # entries kept per cache (a few MB at most); a full cache starts again


def _remember(cache: dict, key, value):
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _read_tail(tail: str):
    """(zone, microseconds of the fraction) of a tail [.f{1,6}][Z|+HH:MM|-HH:MM]; None otherwise."""
    fraction, zone = "", tail
    if tail[:1] == ".":
        zone = tail[1:].lstrip("0123456789")
        fraction = tail[1 : len(tail) - len(zone)]
        if not 1 <= len(fraction) <= 6:
            return None
    if not _ZONE.fullmatch(zone):
        return None
    read = (zone, int(fraction.ljust(6, "0")) if fraction else 0)
    # Milliseconds make a thousand tails per zone, worth keeping; microseconds would only crowd them out.
    return _remember(_tails, tail, read) if len(fraction) <= 3 else read


def _read_minute(value: str, zone: str):
    try:
        parsed = parse_timestamp(value[:16] + ":00" + zone)
    except OverflowError:
        return None
    if parsed is None:
        return None
    return _remember(_minutes, value[:16] + zone, ((parsed - PG_EPOCH) // _MICROSECOND, parsed.date()))


def _fast_instant(value: str):
    """(microseconds since PG_EPOCH, UTC day) of a received_at in the usual shape, as
    parse_timestamp would read it; None for any other value (parse_timestamp then judges it)."""
    seconds = _SECONDS.get(value[16:19])
    if seconds is None:
        return None
    tail = _tails.get(value[19:]) or _read_tail(value[19:])
    if tail is None:
        return None
    minute = _minutes.get(value[:16] + tail[0]) or _read_minute(value, tail[0])
    if minute is None:
        return None
    return minute[0] + seconds + tail[1], minute[1]


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        decimal.Decimal: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _reject_constant(name):
    raise ValueError(f"{name} is not strict JSON")


# orjson reads numbers as doubles and refuses those beyond a double's range, which numeric (hence
# jsonb) may still hold: such lines are read again keeping every number as a Decimal.
_exact_decoder = json.JSONDecoder(
    parse_float=decimal.Decimal, parse_int=decimal.Decimal, parse_constant=_reject_constant
)


def _decode(raw: bytes):
    """The line's JSON value; raises ValueError or RecursionError with the decoder's reason."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        # orjson refuses a lone surrogate escape too, which is valid JSON: read it so the line's day
        # is known (a reject belongs to its day); _jsonb_problem then rejects it.
        if "infinity" not in str(err) and "surrogate" not in str(err):
            raise
    return _exact_decoder.decode(raw.decode("utf-8"))


def _decode_failure(raw: bytes, err: Exception) -> str:
    """Why orjson refused the line, in the contract's words."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 ({bad.reason} at byte {bad.start})"
    message = str(err)
    if "depth limit" in message or isinstance(err, RecursionError):
        return "not valid JSON for the loader: nested deeper than 1024 levels"
    return f"not valid JSON: {message}"


def _strings(value) -> Iterator[str]:
    """Every string of a decoded JSON value, object keys included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# A surrogate left in a decoded string is a lone one: the decoder joins a pair into one character.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _number_out_of_range(token: bytes) -> bool:
    """Whether PostgreSQL's numeric input refuses this JSON number (numeric.c's own limits)."""
    whole, fraction, exponent = _NUMBER.fullmatch(token).groups()
    fraction = fraction or b""
    if exponent is not None and len(exponent.lstrip(b"+-").lstrip(b"0")) > 10:
        return True
    exponent = int(exponent or 0)
    if abs(exponent) > NUMERIC_MAX_EXPONENT:
        return True
    if len(fraction) - exponent > NUMERIC_MAX_DSCALE:
        return True
    digits = whole + fraction
    significant = digits.lstrip(b"0")
    if not significant:
        return False  # zero: only its scale matters
    leading_zeros = len(digits) - len(significant)
    return len(whole) - 1 - leading_zeros + exponent > NUMERIC_MAX_DWEIGHT


def _jsonb_problem(raw: bytes, record) -> str | None:
    """Why PostgreSQL's jsonb would refuse a decoded line, if it would."""
    if len(raw) > MAX_LINE_BYTES:
        return f"longer than {MAX_LINE_BYTES} bytes, more than PostgreSQL jsonb can store"
    if b"\\u0000" in raw and any("\x00" in text for text in _strings(record)):
        return "contains \\u0000, which PostgreSQL jsonb cannot store"
    if (b"\\ud" in raw or b"\\uD" in raw) and any(_SURROGATE.search(text) for text in _strings(record)):
        return "contains a lone surrogate escape, which PostgreSQL jsonb cannot store"
    if _RISKY_NUMBER.search(raw):
        for match in _TOKEN.finditer(raw):
            if match.group(1) and _number_out_of_range(match.group(1)):
                return "holds a number out of PostgreSQL numeric's range"
    return None


def judge(number: int, raw: bytes, required) -> Line:
    """Validate one line (or array element) against the contract's section 4; never raises."""
    try:
        return _judge(number, raw, required)
    except Exception as err:  # a check that fails on odd input still yields a reject, not a failed load
        return Line(number, raw, reason=f"cannot be judged ({type(err).__name__}: {err})"[:500])


def _judge(number: int, raw: bytes, required) -> Line:
    try:
        record = _decode(raw)
    except (ValueError, RecursionError) as err:  # orjson's JSONDecodeError is a ValueError
        return Line(number, raw, reason=_decode_failure(raw, err))
    if type(record) is not dict:
        return Line(number, raw, reason=f"not a JSON object but {_type_name(record)}")
    received_at = None
    if "received_at" in required:
        # Read the day before judging the rest: a rejected line with a readable day belongs there.
        try:
            received_at = parse_timestamp(record.get("received_at"))
        except OverflowError:
            return Line(number, raw, reason=f"received_at {record['received_at']!r} is out of range in UTC")
    reason = _record_problem(raw, record, required, received_at)
    return _line(number, raw, None if reason else record, reason, received_at)


def _record_problem(raw: bytes, record: dict, required, received_at) -> str | None:
    """Why a decoded JSON object is rejected, if it is."""
    reason = _jsonb_problem(raw, record)
    if reason:
        return reason
    for field in required:
        if field not in record:
            return f"missing required field '{field}'"
        if type(record[field]) is not str:
            return f"field '{field}' must be a string, got {_type_name(record[field])}"
    if "received_at" in required and received_at is None:
        return f"unparseable received_at {record['received_at']!r}"
    return None


class _Counted:
    """A stream that counts the bytes read from it."""

    def __init__(self, stream):
        self.stream, self.bytes = stream, 0

    def read(self, size=-1) -> bytes:
        data = self.stream.read(size)
        self.bytes += len(data)
        return data


def _chunks(stream, name: str) -> Iterator[bytes]:
    """The object's bytes in chunks, gzip undone when the name ends in `.gz`."""
    gzipped = name.endswith(".gz")
    if gzipped:
        stream = gzip.GzipFile(fileobj=(compressed := _Counted(stream)), mode="rb")
    try:
        while chunk := stream.read(CHUNK):
            yield chunk
        if gzipped and not compressed.bytes:
            # gzip reads no bytes as no members, but even an empty file compresses to 20: this one
            # was cut before its header (a writer that died), and loading it as a day without
            # events would lose the day silently
            raise EOFError("0 bytes")
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        # gzip raises EOFError on a truncated member and BadGzipFile on bytes that are not gzip.
        raise SourceError(f"{name}: cannot read the gzip object ({err}); is it truncated, or not gzip?") from None


def read_lines(stream, name: str, required) -> Iterator[Line]:
    """Every non-blank line (NDJSON) or element (JSON array) of the object, judged, in order."""
    for block in read_blocks(stream, name, required):
        yield from block


def read_blocks(stream, name: str, required) -> Iterator[list]:
    """read_lines in lists, one per block of the source (about CHUNK bytes of whole lines), so that
    the caller's work and this module's are per block, not per line."""
    chunks = _chunks(stream, name)
    pieces, size, content = [], 0, False
    for chunk in chunks:
        # Look at each chunk once: a source that starts with much whitespace is not copied again and again.
        pieces.append(chunk)
        size += len(chunk)
        content = content or bool(chunk.lstrip(JSON_WHITESPACE))
        if content and size >= len(BOM):
            break
    head = b"".join(pieces)
    if head.startswith(BOM):
        head = head[len(BOM) :]
    if head.lstrip(JSON_WHITESPACE)[:1] == b"[":
        data = head + b"".join(chunks)
        try:
            elements = _array_elements(data, name)
        except SourceError:
            if not _first_line_stands_alone(data):
                raise
            # NDJSON whose first line is an array: one bad line, not a broken JSON array
            head, chunks = b"", (data[start : start + CHUNK] for start in range(0, len(data), CHUNK))
        else:
            judged = (judge(number, text.encode("utf-8"), required) for number, text in enumerate(elements, start=1))
            while block := list(itertools.islice(judged, 1024)):
                yield block
            return
    number = 0
    # No name holds a block or its source chunks while its lines are judged: a long line's bytes
    # are then held once, by its line, as they were before blocks.
    for raws, careful in map(_split_block, _line_blocks(itertools.chain([head], chunks))):
        yield _judge_block(raws, number, required, careful)
        number += len(raws)


def _line_blocks(chunks) -> Iterator[bytes]:
    """The chunks regrouped to end at a line end (the last one may not), each byte copied once,
    so the cost stays linear in a line's length however long one is."""
    pending = []
    for chunk in chunks:
        end = chunk.rfind(b"\n")
        if end < 0:
            pending.append(chunk)  # no line end yet: keep the piece, join once when the line ends
            continue
        pending.append(memoryview(chunk)[:end])
        yield _joined(pending)
        pending.append(chunk[end + 1 :])
    if any(pending):
        yield _joined(pending)


def _joined(pieces: list) -> bytes:
    """The pieces as one, the list emptied so that the pieces can go."""
    whole = b"".join(pieces)
    pieces.clear()
    return whole


def _split_block(block: bytes) -> tuple:
    """The block's lines without their \\n (nor a \\r before it), and whether it is _careful."""
    raws = block.split(b"\n")
    if b"\r" in block:
        raws = [raw[:-1] if raw.endswith(b"\r") else raw for raw in raws]
    return raws, _careful(block)


# What the fast path leaves to judge(): a \u0000, a number numeric cannot hold, a line beyond
# jsonb's size. orjson accepts them, and a per-line regex costs more than the rest of the line's
# judging, so a whole block is looked at once, at C speed. In a copy of the block where every digit
# is 0, E is e, + is -, and every byte that can end a JSON number (, } ] whitespace) is a comma:
# - no "0," (and no final 0) means no line of the block holds a number at all: nothing to check;
# - otherwise a superset of _RISKY_NUMBER is looked for: a run of 6000 digits, or an exponent of
#   5 or more digits that is a number's (after a digit, up to the number's end; UUIDs hold many
#   "e12345", hence the regex on each hit).
_NUMBER_SHAPE = bytes.maketrans(b"123456789E+,}] \t\r\n", b"000000000e-,,,,,,,")
_LONG_DIGIT_RUN = b"0" * 6000
_EXPONENT = re.compile(rb"[0-9][eE][+-]?[0-9]{5,}(?=[,}\]\s]|\Z)")


def _careful(block: bytes) -> bool:
    """Whether some line of the block may hold what jsonb refuses although orjson accepts it."""
    if len(block) > MAX_LINE_BYTES or (b"\\" in block and b"\\u0000" in block):
        return True
    shape = block.translate(_NUMBER_SHAPE)
    if b"0," not in shape and not shape.endswith(b"0"):
        return False
    if _LONG_DIGIT_RUN in shape:
        return True
    for exponent in (b"e00000", b"e-00000"):
        at = shape.find(exponent)
        while at >= 0:
            if at and _EXPONENT.match(block, at - 1):
                return True
            at = shape.find(exponent, at + 1)
    return False


def _judge_block(raws: list, number: int, required, careful: bool) -> list:
    """The block's lines judged, numbered from number + 1. A line that is a JSON object with every
    required field a string and received_at in the usual shape is valid (the block was checked by
    _careful); any other line, and every line of a careful block, goes to judge()."""
    lines = []
    dated = "received_at" in required
    for raw in raws:
        number += 1
        if not careful:
            try:
                record = orjson.loads(raw)
            except Exception:  # judge() words the reason, whatever the exception
                record = None
            if type(record) is dict:
                for field in required:
                    if type(record.get(field)) is not str:
                        break
                else:
                    if not dated:
                        lines.append(_new_line(Line, (number, raw, record, None, None, None)))
                        continue
                    # _fast_instant's look-ups, inlined for the usual line whose three parts were
                    # seen before (a call costs a quarter of them); _fast_instant reads new ones.
                    value = record["received_at"]
                    seconds = _SECONDS.get(value[16:19])
                    tail = _tails.get(value[19:])
                    minute = _minutes.get(value[:16] + tail[0]) if tail else None
                    if seconds is not None and minute:
                        instant, day = minute[0] + seconds + tail[1], minute[1]
                    else:
                        instant, day = _fast_instant(value) or (None, None)
                    if instant is not None:
                        lines.append(_new_line(Line, (number, raw, record, None, instant, day)))
                        continue
        if raw.strip(JSON_WHITESPACE):
            lines.append(judge(number, raw, required))
    return lines


def _first_line_stands_alone(data: bytes) -> bool:
    """Whether the object's first non-blank line is a whole JSON value with more lines after it. A
    JSON array spread over lines cannot start so; NDJSON whose first line is an array (a bad line)
    does."""
    first, _, rest = data.lstrip(JSON_WHITESPACE).partition(b"\n")
    if not rest.strip(JSON_WHITESPACE):
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


def _array_elements(data: bytes, name: str) -> list:
    """The elements of a JSON-array object, each as its text; the array must parse as a whole."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{name}: JSON array is not valid UTF-8 ({err})") from None
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
    except (ValueError, RecursionError) as err:
        reason = "an element is nested too deeply" if isinstance(err, RecursionError) else err
        raise SourceError(f"{name}: the JSON array does not parse as a whole ({reason})") from None
    return elements
