"""Deterministic source data: the bundled sample and large benchmark sets.

Reads nothing. Writes UTF-8 NDJSON in the layouts of the data contract (section 2):

- `python -m tools.generate sample [--out data]` writes `events_sample.json` and `orgs_sample.json`,
  byte-identical on every run: 2024-01-01 to 2024-04-30, every case of sections 3 and 4 the
  pipeline must handle (partial updates, re-created users, duplicates, late redeliveries, mixed
  offsets, unknown types and organizations, and about 0.4% rejected lines).
- `python -m tools.generate bench --out DIR --start D --end D --events-per-day N
  [--layout one-file|daily] [--gzip] [--seed S] [--part-lines L] [--orgs K]` writes
  `DIR/events.json[.gz]` or `DIR/events/date=D/part-NNNN.json[.gz]`, plus `DIR/orgs.json`; every
  line is valid. It streams, so tens of millions of events need no more memory than ten.

Everything random comes from one `random.Random(seed)` consumed in a fixed order: no clock, and no
iteration over sets, so the same arguments give the same bytes.
"""

import argparse
import contextlib
import datetime
import gzip
import io
import itertools
import json
import math
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

UTC = datetime.UTC

# --- the sample's shape ---------------------------------------------------------------------------

SAMPLE_SEED = 20240101
SAMPLE_START = datetime.datetime(2024, 1, 1, tzinfo=UTC)
SAMPLE_END = datetime.datetime(2024, 5, 1, tzinfo=UTC)  # exclusive: the last day is 2024-04-30

# New users per signup month; growth makes the cohorts differ in size.
SIGNUPS_PER_MONTH = ((1, 90), (2, 95), (3, 100), (4, 100))

# Signups whose local date is in another month than their UTC date: the cohort follows UTC.
BOUNDARY_SIGNUPS = (
    ("2024-01-31T23:30:00", "+02:00"),  # 2024-02-01 01:30 local, cohort 2024-01
    ("2024-02-29T20:15:00", "+05:30"),  # 2024-03-01 01:45 local, cohort 2024-02
    ("2024-03-01T03:00:00", "-05:00"),  # 2024-02-29 22:00 local, cohort 2024-03
    ("2024-04-01T02:10:00", "-05:00"),  # 2024-03-31 21:10 local, cohort 2024-04
    ("2024-01-01T01:00:00", "-05:00"),  # 2023-12-31 local, before the history start; cohort 2024-01
    ("2024-04-30T23:20:00", "+02:00"),  # 2024-05-01 local, after the last day; cohort 2024-04
)

# One user created and deleted at the same instant, written in two offsets: the contract says the
# deletion counts as the later event, so this user is in the March cohort and never active.
SAME_INSTANT_SIGNUP_AND_DELETION = ("2024-03-18T09:00:00", "Z", "+02:00")

MAX_UPDATES_PER_USER = 22
DELETE_SHARE = 0.2
RECREATE_SHARE = 0.35  # of the deleted users
UNKNOWN_TYPE_EVENTS = 12
UNKNOWN_EVENT_TYPES = ("page_viewed", "session_started")
GHOST_DELETIONS = 4  # user_deleted of users that never had a user_created
LATE_REDELIVERIES = 5  # same id again, 1-4 days later
ADJACENT_DUPLICATES = 15  # same line twice in a row
DISTANT_DUPLICATES = 15  # same line again 300-1500 lines further down
STRAGGLER_SHARE = 0.01  # lines written hours to days after their received_at

# Bad lines (contract section 4), one per kind, each on its own day. The placement time is where
# the line sits in the file; for the kinds marked undated the line has no readable received_at.
BAD_LINES = (
    # kind, placement (UTC), has a readable received_at
    ("not_json", "2024-01-09T14:12:00", False),
    ("nan_value", "2024-01-17T08:40:00", True),
    ("missing_user_id", "2024-01-26T19:05:00", True),
    ("user_id_number", "2024-02-06T10:30:00", True),
    ("not_object", "2024-02-15T16:20:00", False),
    ("nul_escape", "2024-02-22T11:11:00", True),
    ("bad_received_at", "2024-03-01T06:45:00", False),
    ("lone_surrogate", "2024-03-12T21:50:00", True),
    ("invalid_utf8", "2024-03-20T09:25:00", True),
    ("event_type_null", "2024-04-03T13:00:00", True),
    ("missing_id", "2024-04-11T17:35:00", True),
    ("infinity_value", "2024-04-24T07:55:00", True),
)

ORGANIZATIONS = (
    # key, name, tier, created_at
    ("org_acme", "Acme Corporation", "enterprise", "2021-03-14T09:00:00Z"),
    ("org_globex", "Globex", "enterprise", "2021-11-02T15:30:00+01:00"),
    ("org_initech", "Initech", "pro", "2022-01-20T08:00:00Z"),
    ("org_umbrella", "Umbrella Labs", "pro", "2022-04-05T12:00:00-05:00"),
    ("org_hooli", "Hooli", "enterprise", "2022-06-30T18:45:00Z"),
    ("org_stark", "Stark Industries", "pro", "2022-09-12T10:10:00Z"),
    ("org_wayne", "Wayne Enterprises", "pro", "2022-12-01T00:00:00Z"),
    ("org_soylent", "Soylent", "free", "2023-02-17T11:20:00+05:30"),
    ("org_cyberdyne", "Cyberdyne Systems", "free", "2023-05-08T16:00:00Z"),
    ("org_tyrell", "Tyrell Corporation", "pro", "2023-07-21T09:30:00Z"),
    ("org_oscorp", "Oscorp", "free", "2023-09-03T13:00:00Z"),
    ("org_zurich", "Zürich Bäckerei", "free", "2023-10-29T07:15:00+01:00"),
    ("org_massive", "Massive Dynamic", "free", "2023-12-15T20:00:00Z"),
)
UNKNOWN_ORGANIZATIONS = ("org_vandelay", "org_pied_piper", "org_dunder")
TIER_WEIGHT = {"enterprise": 5, "pro": 3, "free": 1}  # bigger customers have more users
UNKNOWN_ORG_SHARE = 0.04
NO_ORG_SHARE = 0.04

FIRST_NAMES = (
    "ana",
    "ben",
    "chloé",
    "dmitri",
    "emma",
    "farid",
    "greta",
    "hiro",
    "ines",
    "jonas",
    "kofi",
    "lena",
    "mateo",
    "nadia",
    "oliver",
    "priya",
    "quentin",
    "rosa",
    "søren",
    "tariq",
    "uma",
    "viktor",
    "wen",
    "xavier",
    "yara",
    "zoë",
    "łukasz",
    "renée",
    "björn",
    "amélie",
)
LAST_NAMES = (
    "almeida",
    "brown",
    "chen",
    "dubois",
    "eriksen",
    "fischer",
    "garcia",
    "hughes",
    "ivanova",
    "jansen",
    "kowalski",
    "lopez",
    "müller",
    "nakamura",
    "okafor",
    "petrov",
    "quinn",
    "rossi",
    "schmidt",
    "tanaka",
    "urban",
    "vargas",
    "weber",
    "yilmaz",
    "zhang",
)
USER_TYPES = ("member", "member", "member", "admin", "viewer")
PROFILE_FIELDS = ("organization_id", "username", "user_email", "user_type")

# How received_at is written: the offset (or none, meaning UTC) and sometimes fractional seconds.
OFFSETS = {"Z": 0, "+00:00": 0, "+02:00": 120, "-05:00": -300, "+05:30": 330, "": 0}
OFFSET_WEIGHTS = {"Z": 55, "+00:00": 5, "+02:00": 12, "-05:00": 10, "+05:30": 6, "": 12}
OFFSET_NAMES = list(OFFSET_WEIGHTS)
OFFSET_CUM_WEIGHTS = list(itertools.accumulate(OFFSET_WEIGHTS.values()))  # once: the bench draws millions
FRACTION_SHARE = 0.2
EXTRA_FIELDS_SHARE = 0.06

# --- the bench's shape ----------------------------------------------------------------------------

BENCH_EVENT_MIX = (("user_created", 25), ("user_updated", 60), ("user_deleted", 12), ("page_viewed", 3))
BENCH_PART_LINES = 100_000
BENCH_ORGS = 100


# --- shared pieces ---------------------------------------------------------------------------------


@dataclass
class Event:
    at: datetime.datetime  # the instant received_at stands for; decides the line's day and order
    fields: dict  # the JSON object as written, received_at already formatted


@dataclass
class Line:
    at: datetime.datetime  # where the line sits in a time-ordered file
    data: bytes  # without the newline
    may_duplicate: bool  # false for bad lines and late redeliveries, so each id's story stays simple


def encode(obj) -> bytes:
    # allow_nan=False: a good line must be strict JSON; NaN only ever appears in a bad line on purpose.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def format_received_at(at: datetime.datetime, offset: str, fraction: bool = False) -> str:
    local = at.astimezone(datetime.timezone(datetime.timedelta(minutes=OFFSETS[offset])))
    text = local.replace(tzinfo=None).isoformat(timespec="milliseconds" if fraction else "seconds")
    return text + offset


def random_received_at(rng: random.Random, at: datetime.datetime) -> str:
    offset = rng.choices(OFFSET_NAMES, cum_weights=OFFSET_CUM_WEIGHTS)[0]
    if rng.random() < FRACTION_SHARE:
        # The fraction stays inside the same second, so day and order are unchanged.
        return format_received_at(at.replace(microsecond=rng.randrange(1000) * 1000), offset, True)
    return format_received_at(at, offset)


def event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def parse_utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


@contextlib.contextmanager
def open_output(path: Path, compress: bool = False):
    """A binary file that appears at `path` only when complete, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        if compress:
            # mtime=0 and no file name in the header: same input, same gzip bytes. Level 6 (gzip's
            # own default) is several times faster than 9 for a few percent more bytes.
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
                io.BufferedWriter(gz, buffer_size=1 << 20) as out,
            ):
                yield out
        else:
            yield raw
    os.replace(tmp, path)


def write_lines(path: Path, lines, compress: bool = False) -> int:
    count = 0
    with open_output(path, compress) as out:
        for data in lines:
            out.write(data + b"\n")
            count += 1
    return count


# --- the sample: users and their events ------------------------------------------------------------


class UserIds:
    """Opaque user ids, `usr_` and 10 hex digits, never handed out twice."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used = set()

    def new(self) -> str:
        while True:
            user_id = f"usr_{self.rng.getrandbits(40):010x}"
            if user_id not in self.used:
                self.used.add(user_id)
                return user_id


def pick_organization(rng: random.Random, allow_none: bool = True):
    """A known organization key mostly, sometimes one the orgs file lacks, sometimes none."""
    roll = rng.random()
    if roll < NO_ORG_SHARE and allow_none:
        return None
    if roll < NO_ORG_SHARE + UNKNOWN_ORG_SHARE:
        return rng.choice(UNKNOWN_ORGANIZATIONS)
    keys = [org[0] for org in ORGANIZATIONS]
    return rng.choices(keys, weights=[TIER_WEIGHT[org[2]] for org in ORGANIZATIONS])[0]


def new_profile(rng: random.Random, with_organization: bool = False) -> dict:
    username = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{rng.randrange(100)}"
    return {
        # An update cannot remove the organization (an absent field keeps the old value), so an
        # update always names one.
        "organization_id": pick_organization(rng, allow_none=not with_organization),
        "username": username,
        "user_email": f"{username}@example.com",
        "user_type": rng.choice(USER_TYPES),
    }


def profile_change(rng: random.Random) -> dict:
    """A user_updated's fields: one to four of the profile fields, new values, the rest absent."""
    count = rng.choices((1, 2, 3, 4), weights=(50, 30, 15, 5))[0]
    chosen = rng.sample(PROFILE_FIELDS, count)
    fresh = new_profile(rng, with_organization=True)
    return {name: fresh[name] for name in PROFILE_FIELDS if name in chosen}


def make_event(rng, event_type, user_id, at, profile=None, offset=None) -> Event:
    """The one place an event's JSON is built: field order, optional fields, extra fields."""
    fields = {"id": event_id(rng), "event_type": event_type, "user_id": user_id}
    for name in PROFILE_FIELDS:
        if profile and profile.get(name) is not None:
            fields[name] = profile[name]
    if offset is None:
        fields["received_at"] = random_received_at(rng, at)
    else:
        fields["received_at"] = format_received_at(at, offset)
    if rng.random() < EXTRA_FIELDS_SHARE:
        # Fields the contract does not know: kept in the raw JSON, ignored by the models.
        fields["context"] = {"ip": f"203.0.113.{rng.randrange(1, 255)}", "app": rng.choice(("web", "ios"))}
        fields["schema_version"] = 2
    return Event(at, fields)


def later(rng: random.Random, at: datetime.datetime) -> datetime.datetime:
    """A next event of the same user: between an hour and eight days on, in whole seconds."""
    return at + datetime.timedelta(seconds=rng.randrange(3600, 8 * 86400))


def user_lifecycle(rng, user_id, signup_at, signup_offset=None) -> list:
    """A user's events: created, partial updates, maybe deleted, maybe created again, and so on."""
    events = []
    at, offset = signup_at, signup_offset
    while True:
        # A re-creation keeps the user_id with a new event id; the signup stays the first one.
        events.append(make_event(rng, "user_created", user_id, at, new_profile(rng), offset))
        deleted = rng.random() < DELETE_SHARE
        # Users who leave do so after a few updates, so most deletions fall inside the sample.
        for _ in range(rng.randrange(4 if deleted else MAX_UPDATES_PER_USER + 1)):
            at = later(rng, at)
            if at >= SAMPLE_END:
                return events
            events.append(make_event(rng, "user_updated", user_id, at, profile_change(rng)))
        at = later(rng, at)
        if not deleted or at >= SAMPLE_END:
            return events
        events.append(make_event(rng, "user_deleted", user_id, at))
        at, offset = later(rng, at), None
        if rng.random() >= RECREATE_SHARE or at >= SAMPLE_END:
            return events


def signups(rng: random.Random) -> list:
    """(instant, offset or None) of every user's first user_created, month by month."""
    result = []
    for month, count in SIGNUPS_PER_MONTH:
        start = datetime.datetime(2024, month, 1, tzinfo=UTC)
        end = datetime.datetime(2024, month + 1, 1, tzinfo=UTC)
        seconds = int((end - start).total_seconds())
        result += [(start + datetime.timedelta(seconds=rng.randrange(seconds)), None) for _ in range(count)]
    result += [(parse_utc(at), offset) for at, offset in BOUNDARY_SIGNUPS]
    return result


def same_instant_signup_and_deletion(rng, user_ids) -> list:
    at, created_offset, deleted_offset = SAME_INSTANT_SIGNUP_AND_DELETION
    user_id = user_ids.new()
    return [
        make_event(rng, "user_created", user_id, parse_utc(at), new_profile(rng), created_offset),
        make_event(rng, "user_deleted", user_id, parse_utc(at), None, deleted_offset),
    ]


def unknown_type_events(rng, events) -> list:
    """Events of types the contract does not know, from existing users: kept, but change no state."""
    created = [e for e in events if e.fields["event_type"] == "user_created"]
    result = []
    while len(result) < UNKNOWN_TYPE_EVENTS:
        source = rng.choice(created)
        at = source.at + datetime.timedelta(seconds=rng.randrange(60, 7 * 86400))
        if at < SAMPLE_END:
            event = make_event(rng, rng.choice(UNKNOWN_EVENT_TYPES), source.fields["user_id"], at)
            event.fields["page"] = rng.choice(("/home", "/settings", "/billing"))
            result.append(event)
    return result


def ghost_deletions(rng, user_ids) -> list:
    """user_deleted of users never created (created before the history, or a producer bug)."""
    seconds = int((SAMPLE_END - SAMPLE_START).total_seconds())
    events = []
    for _ in range(GHOST_DELETIONS):
        at = SAMPLE_START + datetime.timedelta(seconds=rng.randrange(seconds))
        events.append(make_event(rng, "user_deleted", user_ids.new(), at))
    return events


def late_redeliveries(rng, events) -> list:
    """Copies of a few events delivered again 1-4 days later on another day; the first delivery wins.

    One is the signup of 2024-01-31 23:30 UTC: a loader that kept the copy would move that user
    from the January to the February cohort.
    """
    month_end_signup = parse_utc(BOUNDARY_SIGNUPS[0][0])
    first = next(e for e in events if e.at == month_end_signup and e.fields["event_type"] == "user_created")
    candidates = [e for e in events if e.at < SAMPLE_END - datetime.timedelta(days=5) and e is not first]
    result = []
    for original in [first] + rng.sample(candidates, LATE_REDELIVERIES - 1):
        at = original.at + datetime.timedelta(days=rng.randint(1, 4), seconds=rng.randrange(43200))
        fields = dict(original.fields, received_at=random_received_at(rng, at))
        result.append(Event(at, fields))
    return result


def bad_line(rng, kind: str, at: datetime.datetime, user_id: str) -> bytes:
    """A line the contract rejects, made from a plausible user_updated."""
    # The é in the username is what the Latin-1 line turns into an invalid UTF-8 byte.
    fields = {
        "id": event_id(rng),
        "event_type": "user_updated",
        "user_id": user_id,
        "username": "renée.dubois7",
        "received_at": format_received_at(at, "Z"),
    }
    compact = {"separators": (",", ":")}
    if kind == "not_json":
        # Cut off inside received_at, like a write interrupted mid-line.
        text = encode(fields).decode()
        return text[: text.index('"received_at"') + len('"received_at":"2024-0')].encode()
    if kind == "nan_value":
        return json.dumps(dict(fields, load_ms=float("nan")), **compact).encode()
    if kind == "infinity_value":
        return json.dumps(dict(fields, score=float("inf")), **compact).encode()
    if kind == "missing_user_id":
        return encode({name: value for name, value in fields.items() if name != "user_id"})
    if kind == "missing_id":
        return encode({name: value for name, value in fields.items() if name != "id"})
    if kind == "user_id_number":
        return encode(dict(fields, user_id=48213))
    if kind == "event_type_null":
        return encode(dict(fields, event_type=None))
    if kind == "not_object":
        return encode([fields])
    if kind == "bad_received_at":
        return encode(dict(fields, received_at="2024-02-30T10:15:00Z"))  # February has no 30th
    if kind == "nul_escape":
        return encode(dict(fields, username="renée\x00"))  # json writes \u0000, which jsonb cannot store
    if kind == "lone_surrogate":
        # ensure_ascii writes the escape \ud800; a raw surrogate could not be encoded at all.
        return json.dumps(dict(fields, username="ren\ud800e"), **compact).encode()
    if kind == "invalid_utf8":
        return json.dumps(fields, ensure_ascii=False, **compact).encode("latin-1")
    raise ValueError(f"unknown bad line kind {kind}")


def bad_lines(rng, events) -> list:
    users = [e.fields["user_id"] for e in events if e.fields["event_type"] == "user_created"]
    lines = []
    for kind, at, _ in BAD_LINES:
        lines.append(Line(parse_utc(at), bad_line(rng, kind, parse_utc(at), rng.choice(users)), False))
    return lines


def roughly_time_ordered(rng, lines) -> list:
    """Sorted by time give or take five minutes, and a few stragglers written hours or days late."""
    keys = []
    for line in lines:
        key = line.at.timestamp() + rng.uniform(-300, 300)
        if rng.random() < STRAGGLER_SHARE:
            key += rng.uniform(3600, 3 * 86400)
        keys.append(key)
    return [line for _, line in sorted(zip(keys, lines, strict=True), key=lambda pair: pair[0])]


def with_duplicates(rng, lines) -> list:
    """Exact redeliveries of good lines: some right after the original, some far down the file."""
    eligible = [i for i, line in enumerate(lines) if line.may_duplicate]
    picked = rng.sample(eligible, ADJACENT_DUPLICATES + DISTANT_DUPLICATES)
    copies_after = {}  # position -> copies written after that line
    for i in picked[:ADJACENT_DUPLICATES]:
        copies_after.setdefault(i, []).append(lines[i])
    for i in picked[ADJACENT_DUPLICATES:]:
        target = min(len(lines) - 1, i + rng.randint(300, 1500))
        copies_after.setdefault(target, []).append(lines[i])
    result = []
    for i, line in enumerate(lines):
        result.append(line)
        result += copies_after.get(i, [])
    return result


def sample_events(seed: int = SAMPLE_SEED) -> list:
    """The lines of events_sample.json, in file order."""
    rng = random.Random(seed)
    user_ids = UserIds(rng)
    events = []
    for signup_at, offset in signups(rng):
        events += user_lifecycle(rng, user_ids.new(), signup_at, offset)
    events += same_instant_signup_and_deletion(rng, user_ids)
    events += unknown_type_events(rng, events)
    events += ghost_deletions(rng, user_ids)
    redeliveries = late_redeliveries(rng, events)
    redelivered_ids = {e.fields["id"] for e in redeliveries}
    lines = [Line(e.at, encode(e.fields), e.fields["id"] not in redelivered_ids) for e in events]
    lines += [Line(e.at, encode(e.fields), False) for e in redeliveries]
    lines += bad_lines(rng, events)
    return with_duplicates(rng, roughly_time_ordered(rng, lines))


def sample_orgs() -> list:
    return [
        {"organization_key": key, "organization_name": name, "organization_tier": tier, "created_at": created}
        for key, name, tier, created in ORGANIZATIONS
    ]


def write_sample(out: Path) -> dict:
    events = write_lines(out / "events_sample.json", [line.data for line in sample_events()])
    orgs = write_lines(out / "orgs_sample.json", [encode(org) for org in sample_orgs()])
    return {"events_sample.json": events, "orgs_sample.json": orgs}


# --- the bench: streamed, valid, any size ------------------------------------------------------------


def bench_user_id(number: int) -> str:
    return f"usr_{number:010x}"


def bench_profile(rng, number: int, org_count: int, fields=PROFILE_FIELDS) -> dict:
    profile = {
        "organization_id": f"org_{rng.randrange(org_count):05d}",
        "username": f"user{number}.{rng.randrange(1000)}",
        "user_email": f"user{number}.{rng.randrange(1000)}@example.com",
        "user_type": rng.choice(USER_TYPES),
    }
    return {name: profile[name] for name in PROFILE_FIELDS if name in fields}


class BenchUsers:
    """How many users exist so far. Users are numbered, so nothing per user is kept in memory."""

    def __init__(self):
        self.count = 0


def bench_orgs(rng, count: int):
    for i in range(count):
        yield {
            "organization_key": f"org_{i:05d}",
            "organization_name": f"Organization {i}",
            "organization_tier": rng.choice(("free", "pro", "enterprise")),
            "created_at": "2020-01-01T00:00:00Z",
        }


def bench_day(rng, day: datetime.date, count: int, users: BenchUsers, org_count: int):
    """Yield a day's `count` lines in time order, every received_at on `day` in UTC.

    Updates and deletions pick any earlier user, so a user can be updated after being deleted:
    fine for timing loads, not meant for checking the report.
    """
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=UTC)
    types = [name for name, _ in BENCH_EVENT_MIX]
    weights = [weight for _, weight in BENCH_EVENT_MIX]
    for i in range(count):
        # One random instant per equal slice of the day: ordered, and never past midnight.
        at = start + datetime.timedelta(seconds=int((i + rng.random()) * 86400 / count))
        event_type = rng.choices(types, weights)[0] if users.count else "user_created"
        if event_type == "user_created":
            number = users.count
            users.count += 1
            profile = bench_profile(rng, number, org_count)
        else:
            number = rng.randrange(users.count)
            profile = None
            if event_type == "user_updated":
                profile = bench_profile(rng, number, org_count, rng.sample(PROFILE_FIELDS, rng.randint(1, 3)))
        fields = {"id": event_id(rng), "event_type": event_type, "user_id": bench_user_id(number)}
        fields.update(profile or {})
        fields["received_at"] = random_received_at(rng, at)
        yield encode(fields)


def days_between(start: datetime.date, end: datetime.date):
    day = start
    while day <= end:
        yield day
        day += datetime.timedelta(days=1)


def write_bench(
    out: Path,
    start,
    end,
    events_per_day,
    layout="one-file",
    compress=False,
    seed=1,
    part_lines=BENCH_PART_LINES,
    org_count=BENCH_ORGS,
) -> dict:
    rng = random.Random(seed)
    suffix = ".json.gz" if compress else ".json"
    users = BenchUsers()
    counts = {"orgs.json": write_lines(out / "orgs.json", (encode(org) for org in bench_orgs(rng, org_count)))}
    if layout == "one-file":
        lines = itertools.chain.from_iterable(
            bench_day(rng, day, events_per_day, users, org_count) for day in days_between(start, end)
        )
        counts["events" + suffix] = write_lines(out / ("events" + suffix), lines, compress)
        return counts
    for day in days_between(start, end):
        lines = bench_day(rng, day, events_per_day, users, org_count)
        for part in range(math.ceil(events_per_day / part_lines)):
            path = out / "events" / f"date={day.isoformat()}" / f"part-{part:04d}{suffix}"
            counts[str(path.relative_to(out))] = write_lines(path, itertools.islice(lines, part_lines), compress)
    return counts


# --- command line -----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.generate", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="write the bundled sample (byte-identical every run)")
    sample.add_argument("--out", type=Path, default=Path("data"), help="folder to write into (default: data)")
    bench = commands.add_parser("bench", help="write a large valid data set for benchmarks")
    bench.add_argument("--out", type=Path, required=True, help="folder to write into")
    day = datetime.date.fromisoformat
    bench.add_argument("--start", type=day, required=True, help="first day, YYYY-MM-DD")
    bench.add_argument("--end", type=day, required=True, help="last day, YYYY-MM-DD")
    bench.add_argument("--events-per-day", type=int, required=True, help="lines per day")
    bench.add_argument(
        "--layout",
        choices=("one-file", "daily"),
        default="one-file",
        help="events.json holding all days, or events/date=D/part-NNNN.json",
    )
    bench.add_argument("--gzip", action="store_true", help="write the events gzip-compressed")
    bench.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    bench.add_argument("--part-lines", type=int, default=BENCH_PART_LINES, help="at most this many lines per part")
    bench.add_argument("--orgs", type=int, default=BENCH_ORGS, help="number of organizations")
    args = parser.parse_args(argv)

    if args.command == "sample":
        counts = write_sample(args.out)
    else:
        if args.end < args.start or args.events_per_day < 1 or args.part_lines < 1 or args.orgs < 1:
            parser.error("need --start <= --end and positive --events-per-day, --part-lines, --orgs")
        counts = write_bench(
            args.out,
            args.start,
            args.end,
            args.events_per_day,
            args.layout,
            args.gzip,
            args.seed,
            args.part_lines,
            args.orgs,
        )
    for name, count in list(counts.items())[:10]:
        print(f"{args.out / name}: {count} lines")
    print(f"{len(counts)} files, {sum(counts.values())} lines")


if __name__ == "__main__":
    main()
