"""Parsing and validation of source lines: the contract's sections 2-4, without a database."""

import datetime
import gzip
import json

import pytest

from tasks import records

from conftest import write_lines

UTC = datetime.UTC
GOOD = {"id": "e1", "event_type": "user_created", "user_id": "u1", "received_at": "2024-01-05T09:00:00Z"}


def judged(tmp_path, content: bytes, name="events.json", required=records.EVENT_REQUIRED):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    with open(path, "rb") as stream:
        return list(records.read_lines(stream, name, required))


def line(**changes):
    return json.dumps({**GOOD, **changes}).encode()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-01-05T09:00:00Z", datetime.datetime(2024, 1, 5, 9, tzinfo=UTC)),
        ("2024-02-01T01:00:00+02:00", datetime.datetime(2024, 1, 31, 23, tzinfo=UTC)),
        ("2024-03-05T23:30:00-01:00", datetime.datetime(2024, 3, 6, 0, 30, tzinfo=UTC)),
        ("2024-01-05T09:00:00", datetime.datetime(2024, 1, 5, 9, tzinfo=UTC)),  # no offset means UTC
        ("2024-01-05 09:00:00.250+05:30", datetime.datetime(2024, 1, 5, 3, 30, 0, 250000, tzinfo=UTC)),
        ("2024-01-05T09:00:00.123456789Z", datetime.datetime(2024, 1, 5, 9, 0, 0, 123456, tzinfo=UTC)),
        # digits past the microsecond are dropped, not rounded: the instant stays on its day
        ("2024-01-31T23:59:59.9999995Z", datetime.datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2024-01-05", datetime.datetime(2024, 1, 5, tzinfo=UTC)),
        ("2024-01-05T09:00:00+0100", datetime.datetime(2024, 1, 5, 8, tzinfo=UTC)),
    ],
)
def test_timestamps_are_read_as_utc(value, expected):
    assert records.parse_timestamp(value) == expected


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2024-13-01T00:00:00Z", "2024-01-05T25:00:00Z", "20240105T090000Z", "2024-W01-1", "", 1704445200],
)
def test_unreadable_timestamps(value):
    assert records.parse_timestamp(value) is None


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "not valid JSON"),
        (b'{"id": NaN}', "not valid JSON"),
        (line(user_id=float("inf")).replace(b"Infinity", b"Infinity"), "not valid JSON"),
        (b"[1, 2]", "not a JSON object but array"),
        (b'"text"', "not a JSON object but string"),
        (line(username="a\u0000b"), "\\u0000"),
        (line(username="x").replace(b'"x"', b'"\\ud800"'), "lone surrogate"),
        (b'{"id": "e1", "user_id": "\xff\xfe"}', "not valid UTF-8"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "missing required field 'user_id'"),
        (line(user_id=42), "field 'user_id' must be a string, got number"),
        (line(event_type=None), "field 'event_type' must be a string, got null"),
        (line(received_at="soon"), "unparseable received_at"),
        (line(received_at=1704445200), "field 'received_at' must be a string"),
    ],
)
def test_each_reject_reason(tmp_path, raw, reason):
    # A good first line keeps the object NDJSON even when the bad line is itself an array.
    good, result = judged(tmp_path, line() + b"\n" + raw + b"\n")
    assert good.is_valid
    assert not result.is_valid
    assert reason in result.reason
    assert result.raw == raw  # kept as it was, invalid bytes included


def test_rejected_line_keeps_its_readable_day(tmp_path):
    (missing,) = judged(tmp_path, json.dumps({"id": "e1", "received_at": "2024-02-01T01:00:00+02:00"}).encode())
    assert missing.reason == "missing required field 'event_type'"
    assert missing.received_at == datetime.datetime(2024, 1, 31, 23, tzinfo=UTC)
    # valid JSON that jsonb cannot store (and orjson refuses to read): its day is still readable
    (surrogate,) = judged(tmp_path, line(username="x").replace(b'"x"', b'"\\ud800"'))
    assert "lone surrogate" in surrogate.reason
    assert surrogate.received_at == records.parse_timestamp(GOOD["received_at"])
    (broken,) = judged(tmp_path, b'{"id": "e1", "received_at": "2024-01-05T09:00:00Z", "x": NaN}')
    assert broken.received_at is None  # not strict JSON: its day cannot be read


def test_bom_blank_lines_and_crlf(tmp_path):
    content = b"\xef\xbb\xbf" + line() + b"\r\n\r\n   \n" + line(id="e2") + b"\r\n"
    result = judged(tmp_path, content)
    assert [(r.number, r.is_valid, r.record["id"]) for r in result] == [(1, True, "e1"), (4, True, "e2")]


def test_extra_fields_are_kept_in_the_text(tmp_path):
    (result,) = judged(tmp_path, line(campaign="spring"))
    assert json.loads(result.raw)["campaign"] == "spring"


def test_gzip_object(tmp_path):
    result = judged(tmp_path, line() + b"\n" + line(id="e2") + b"\n", name="part-0.json.gz")
    assert [r.record["id"] for r in result] == ["e1", "e2"]


def test_truncated_gzip_fails_the_object(tmp_path):
    path = tmp_path / "part.json.gz"
    path.write_bytes(gzip.compress(line() * 1000)[:-20])
    with pytest.raises(records.SourceError, match="part.json.gz.*truncated"), open(path, "rb") as stream:
        list(records.read_lines(stream, "part.json.gz", records.EVENT_REQUIRED))


def test_json_array_elements_count_as_lines(tmp_path):
    content = b"\xef\xbb\xbf [\n" + line() + b",\n 7,\n" + line(user_id=None) + b"," + line(id="e3") + b"\n]\n"
    result = judged(tmp_path, content)
    assert [(r.number, r.is_valid) for r in result] == [(1, True), (2, False), (3, False), (4, True)]
    assert result[1].reason == "not a JSON object but number" and result[1].raw == b"7"
    assert result[3].record["id"] == "e3"


@pytest.mark.parametrize(
    "content", [b"[" + line() + b",", b"[" + line() + b"] trailing", b"[" + line() + b" " + line() + b"]"]
)
def test_json_array_that_does_not_parse_fails_the_object(tmp_path, content):
    with pytest.raises(records.SourceError, match="does not parse as a whole"):
        judged(tmp_path, content)


@pytest.mark.parametrize(
    "first, reason",
    [(b'["not", "an", "object"]', "not a JSON object but array"), (b"[1, NaN]", "not valid JSON"), (b"[]", "array")],
)
def test_ndjson_whose_first_line_is_an_array_rejects_that_line_only(tmp_path, first, reason):
    # It starts with "[" but does not parse as one array; its first line is a whole value of its own.
    result = judged(tmp_path, first + b"\n" + line() + b"\n\n" + line(id="e2") + b"\n")
    assert [(r.number, r.is_valid) for r in result] == [(1, False), (2, True), (4, True)]
    assert reason in result[0].reason and result[0].raw == first
    # blank lines before it are tolerated, as anywhere in NDJSON
    result = judged(tmp_path, b"\n \r\n" + first + b"\n" + line() + b"\n")
    assert [(r.number, r.is_valid) for r in result] == [(3, False), (4, True)]


def test_a_json_array_spread_over_lines_still_fails_whole_when_broken(tmp_path):
    # Its first line is not a value of its own ("[" or "[{...},"), so it is not taken for NDJSON.
    for content in (b"[\n" + line() + b",\n" + line(id="e2") + b",\n", b"[" + line() + b",\n" + line(id="e2")):
        with pytest.raises(records.SourceError, match="does not parse as a whole"):
            judged(tmp_path, content)


def test_empty_array_and_empty_file(tmp_path):
    assert judged(tmp_path, b"[ ]") == []
    assert judged(tmp_path, b"") == []


def test_organizations_require_only_the_key(tmp_path):
    path = write_lines(
        tmp_path / "orgs.json", [{"organization_key": "o1"}, {"organization_name": "x"}, {"organization_key": 5}]
    )
    with open(path, "rb") as stream:
        result = list(records.read_lines(stream, "orgs.json", records.ORGANIZATION_REQUIRED))
    assert [r.reason for r in result] == [
        None,
        "missing required field 'organization_key'",
        "field 'organization_key' must be a string, got number",
    ]
