"""Tests of tools.generate: the sample is deterministic, committed as generated, and covers the
contract's cases; the bench writes what it is asked for. No database needed.

The strict line check here is written independently of the generator, from the contract's
section 4, so the generator cannot grade its own homework.
"""

import collections
import datetime
import gzip
import json
from pathlib import Path

import pytest

from tools import generate

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_EVENT_FIELDS = ("id", "event_type", "user_id", "received_at")
PROFILE_FIELDS = ("organization_id", "username", "user_email", "user_type")


def _no_constants(name):
    raise ValueError(f"{name} is not strict JSON")


def strict_event(raw: bytes):
    """The event of a line the contract accepts, or None when the contract rejects the line."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return None
    if not isinstance(obj, dict):
        return None
    if any(not isinstance(obj.get(name), str) for name in REQUIRED_EVENT_FIELDS):
        return None
    try:
        # jsonb refuses NUL and lone surrogates; both survive json.loads but not a UTF-8 round trip.
        text = json.dumps(obj, ensure_ascii=False)
        text.encode("utf-8")
        received_at = datetime.datetime.fromisoformat(obj["received_at"])
    except (UnicodeEncodeError, ValueError):
        return None
    if "\\u0000" in text:
        return None
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=datetime.UTC)
    obj["_utc"] = received_at.astimezone(datetime.UTC)
    return obj


def read_lines(path: Path) -> list:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n") and b"\r\n" not in data
    return data.split(b"\n")[:-1]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    generate.main(["sample", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def sample(sample_dir):
    lines = read_lines(sample_dir / "events_sample.json")
    return lines, [strict_event(raw) for raw in lines]


def test_sample_is_deterministic(sample_dir, tmp_path):
    generate.main(["sample", "--out", str(tmp_path)])
    for name in ("events_sample.json", "orgs_sample.json"):
        assert (tmp_path / name).read_bytes() == (sample_dir / name).read_bytes(), name


def test_committed_sample_is_what_the_generator_writes(sample_dir):
    # If this fails, the data/ files were edited by hand or the generator changed:
    # run `python -m tools.generate sample` and commit both.
    for name in ("events_sample.json", "orgs_sample.json"):
        assert (ROOT / "data" / name).read_bytes() == (sample_dir / name).read_bytes(), name


def test_bad_lines_are_few_and_all_of_the_intended_kinds(sample):
    lines, events = sample
    bad = [raw for raw, event in zip(lines, events, strict=True) if event is None]
    assert len(bad) == len(generate.BAD_LINES)
    assert len(bad) / len(lines) < 0.01
    assert 3000 <= len(lines) <= 4000


def lenient_day(raw: bytes):
    """The UTC day of a rejected line as a forgiving reader finds it, or None."""
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
        received_at = datetime.datetime.fromisoformat(obj["received_at"])
    except (ValueError, TypeError, KeyError):
        return None
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=datetime.UTC)
    return received_at.astimezone(datetime.UTC).date().isoformat()


def test_bad_lines_have_a_readable_day_as_documented(sample):
    # Loaders file a rejected line under its day when they can read one (contract section 4).
    lines, events = sample
    found = collections.Counter(lenient_day(raw) for raw, event in zip(lines, events, strict=True) if event is None)
    expected = collections.Counter(at[:10] if dated else None for _, at, dated in generate.BAD_LINES)
    assert found == expected


def test_orgs_file_is_clean(sample_dir):
    lines = read_lines(sample_dir / "orgs_sample.json")
    orgs = [json.loads(raw.decode("utf-8"), parse_constant=_no_constants) for raw in lines]
    keys = [org["organization_key"] for org in orgs]
    assert 10 <= len(keys) == len(set(keys))
    assert {org["organization_tier"] for org in orgs} == {"free", "pro", "enterprise"}
    for org in orgs:
        datetime.datetime.fromisoformat(org["created_at"])


def test_sample_covers_four_months_and_several_cohorts(sample):
    _, events = sample
    good = [e for e in events if e is not None]
    months = {e["_utc"].strftime("%Y-%m") for e in good}
    assert months == {"2024-01", "2024-02", "2024-03", "2024-04"}
    signups = {}
    for e in good:
        if e["event_type"] == "user_created":
            signups[e["user_id"]] = min(e["_utc"], signups.get(e["user_id"], e["_utc"]))
    assert len({at.strftime("%Y-%m") for at in signups.values()}) >= 3
    # Some signups are written in a local time whose month is not the UTC month.
    assert any(e["received_at"][:7] != e["_utc"].strftime("%Y-%m") for e in good)


def test_sample_has_duplicates_and_late_redeliveries(sample):
    lines, events = sample
    by_id = collections.defaultdict(list)
    for raw, e in zip(lines, events, strict=True):
        if e is not None:
            by_id[e["id"]].append((raw, e["_utc"].date()))
    repeated = [copies for copies in by_id.values() if len(copies) > 1]
    exact = [c for c in repeated if len({raw for raw, _ in c}) == 1]
    late = [c for c in repeated if len({day for _, day in c}) > 1]
    assert len(exact) >= 10
    assert len(late) >= 3
    adjacent = sum(1 for a, b in zip(lines, lines[1:], strict=False) if a == b and strict_event(a) is not None)
    assert 0 < adjacent < len(exact)


def test_sample_has_partial_updates_unknown_types_and_recreated_users(sample):
    _, events = sample
    good = [e for e in events if e is not None]
    updates = [e for e in good if e["event_type"] == "user_updated"]
    assert any(0 < sum(name in e for name in PROFILE_FIELDS) < len(PROFILE_FIELDS) for e in updates)
    assert any(e["event_type"] not in ("user_created", "user_updated", "user_deleted") for e in good)
    created = collections.defaultdict(set)
    for e in good:
        if e["event_type"] == "user_created":
            created[e["user_id"]].add(e["id"])
    assert any(len(ids) > 1 for ids in created.values())  # deleted, then created again
    assert any(e["event_type"] == "user_deleted" and e["user_id"] not in created for e in good)


@pytest.mark.parametrize("layout", ["one-file", "daily"])
@pytest.mark.parametrize("compress", [False, True])
def test_bench_writes_the_requested_events(tmp_path, layout, compress):
    args = [
        "bench",
        "--out",
        str(tmp_path),
        "--start",
        "2024-02-28",
        "--end",
        "2024-03-01",
        "--events-per-day",
        "250",
        "--layout",
        layout,
        "--part-lines",
        "100",
        "--orgs",
        "7",
    ]
    generate.main(args + (["--gzip"] if compress else []))
    suffix = ".json.gz" if compress else ".json"

    assert len(read_lines(tmp_path / "orgs.json")) == 7
    if layout == "one-file":
        files = {None: [tmp_path / f"events{suffix}"]}
    else:
        files = {
            day: sorted((tmp_path / "events" / f"date={day}").iterdir())
            for day in ("2024-02-28", "2024-02-29", "2024-03-01")
        }
        assert all(len(parts) == 3 for parts in files.values())  # 100 + 100 + 50
    total = 0
    for day, paths in files.items():
        for path in paths:
            assert path.name.endswith(suffix)
            for raw in read_lines(path):
                event = strict_event(raw)
                assert event is not None, raw
                if day is not None:
                    assert event["_utc"].date().isoformat() == day
                total += 1
    assert total == 3 * 250
