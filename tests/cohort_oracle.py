"""The contract's cohort report (section 6) computed in plain Python, straight from source files.

An independent second implementation: the pipeline's CSV must equal this byte for byte. It shares
only the line parser with the pipeline (whose own rules are tested in test_records.py).
"""

import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from tasks import records

UTC = datetime.UTC
HEADER = "cohort_month,months_since_signup,cohort_size,active_users,retention_rate\n"


def _valid_lines(path: Path, key: str):
    with open(path, "rb") as stream:
        yield from (line for line in records.read_lines(stream, key, records.EVENT_REQUIRED) if line.is_valid)


def one_file_events(path: Path, key: str):
    """(partition, key, line, record, received_at) of each valid line; partition = UTC day."""
    for line in _valid_lines(path, key):
        yield line.received_at.date(), key, line.number, line.record, line.received_at


def daily_events(files):
    """Same, for the daily layout: `files` is [(partition, key, path)]."""
    for partition, key, path in files:
        for line in _valid_lines(path, key):
            yield partition, key, line.number, line.record, line.received_at


def _month_start(year, month):
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime.datetime(year, month, 1, tzinfo=UTC)


def report(events, date: datetime.date, history_start: datetime.date) -> str:
    """The report of `date` over the partitions from `history_start` to `date` (contract, sections 1 and 6)."""
    cutoff = datetime.datetime.combine(date + datetime.timedelta(days=1), datetime.time(), tzinfo=UTC)
    first = {}
    for event in sorted(events, key=lambda e: e[:3]):
        if history_start <= event[0] <= date:
            first.setdefault(event[3]["id"], event)  # first delivery wins
    seen = [(record, at) for _, _, _, record, at in first.values() if at < cutoff]

    signup, lifecycle = {}, {}
    for record, at in seen:
        kind, user = record["event_type"], record["user_id"]
        if kind == "user_created":
            signup[user] = min(signup.get(user, at), at)
        if kind in ("user_created", "user_deleted"):
            # At equal received_at a deletion counts as the later event.
            lifecycle.setdefault(user, []).append((at, kind == "user_deleted"))

    def active(user, instant):
        before = [entry for entry in lifecycle[user] if entry[0] < instant]
        return bool(before) and not max(before)[1]

    cohorts = {}
    for user, at in signup.items():
        cohorts.setdefault((at.year, at.month), []).append(user)
    out = [HEADER]
    for (year, month), users in sorted(cohorts.items()):
        for k in range((date.year - year) * 12 + date.month - month + 1):
            instant = min(_month_start(year, month + k + 1), cutoff)
            count = sum(active(user, instant) for user in users)
            rate = (Decimal(count) / Decimal(len(users))).quantize(Decimal("0.0001"), ROUND_HALF_UP)
            out.append(f"{year:04d}-{month:02d},{k},{len(users)},{count},{rate}\n")
    return "".join(out)
