"""Staging loads against a real PostgreSQL: exact counts, rejects, idempotence, atomicity, locks."""

import datetime
import os
import signal
import subprocess
import sys
import threading

import luigi
import pytest
from conftest import ROOT, query, run_cli, write_lines

from tasks import database
from tasks.extract import downloaded
from tasks.load import EVENTS, LoadEvents, LoadHistory, RejectRatioExceeded, load_partition

D1, D2, D3 = datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)


def event(number, received_at, **extra):
    return {"id": f"e{number}", "event_type": "user_created", "user_id": f"u{number}", "received_at": received_at, **extra}


def run(task):
    return luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")


def partition_counts(table):
    return dict(query(f"select date, count(*) from {table} group by date order by date"))


def fingerprint():
    """Everything staging and the markers hold, so that a re-run can be shown to change nothing."""
    tables = ["staging.event", "staging.organization", "staging.event_rejected", "etl.marker"]
    return {t: query(f"select md5(string_agg(t::text, '|' order by t::text)), count(*) from {t} t") for t in tables}


@pytest.fixture
def one_file_source(tmp_path, monkeypatch, settings):
    """A one-file source over three days, with duplicates, offsets and bad lines of every kind."""
    source = tmp_path / "source"
    write_lines(source / "events_sample.json", [
        event(1, "2024-01-01T10:00:00Z"),
        event(2, "2024-01-02T01:00:00+02:00"),  # 2024-01-01 23:00 UTC
        event(3, "2024-01-02T12:00:00"),  # no offset: UTC
        event(3, "2024-01-02T12:00:00"),  # duplicate delivery: a line like any other in staging
        event(4, "2024-01-02T23:30:00-01:00"),  # 2024-01-03 00:30 UTC
        b"{not json",  # day unreadable: recorded by every load
        {"id": "e5", "received_at": "2024-01-02T08:00:00Z"},  # missing fields, day readable
        event(6, "2024-01-03T10:00:00Z", user_id=6),  # wrong type, day readable
        event(7, "someday"),  # day unreadable
        event(8, "2024-01-03T11:00:00Z", username="a\u0000b"),
        event(9, "2024-01-04T00:00:00Z"),  # after every loaded date
    ])
    write_lines(source / "orgs_sample.json", [{"organization_key": "o1"}, {"organization_key": "o2", "x": 1}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", D1.isoformat())
    settings("etl", max_reject_ratio=0.6)
    return source


def test_one_file_layout_exact_counts_and_rejects(database_url, one_file_source):
    assert run(LoadHistory(date=D3)).status == luigi.LuigiStatusCode.SUCCESS
    assert partition_counts("staging.event") == {D1: 2, D2: 2, D3: 1}
    assert partition_counts("staging.organization") == {D1: 2, D2: 2, D3: 2}
    rejected = query("select date, line_number, reason from staging.event_rejected order by date, line_number")
    lines_by_date = {}
    for date, number, _ in rejected:
        lines_by_date.setdefault(date, []).append(number)
    # Undated rejects (lines 6 and 9) in every partition; dated ones only in their own day.
    assert lines_by_date == {D1: [6, 9], D2: [6, 7, 9], D3: [6, 8, 9, 10]}
    raw = query("select raw_line from staging.event_rejected where line_number = 6 limit 1")[0][0]
    assert bytes(raw) == b"{not json"
    assert query("select received_at from staging.event where event_id = 'e2'")[0][0] == datetime.datetime(
        2024, 1, 1, 23, tzinfo=datetime.timezone.utc
    )
    markers = query("select partition_date, row_count, reject_count from etl.marker where target = 'staging.event' order by 1")
    assert markers == [(D1, 2, 2), (D2, 2, 3), (D3, 1, 4)]


def test_rerun_changes_nothing_and_checks_completion_in_bulk(database_url, one_file_source, monkeypatch):
    run(LoadHistory(date=D3))
    before = fingerprint()
    checks = []
    monkeypatch.setattr(database.MarkerTarget, "exists", lambda self: checks.append(self) or True)
    result = run(LoadHistory(date=D3))
    assert result.status == luigi.LuigiStatusCode.SUCCESS
    assert checks == []  # no completion query per date: one bulk query answered for the range
    assert fingerprint() == before


def test_reloading_a_partition_replaces_it(database_url, one_file_source):
    run(LoadHistory(date=D2))
    write_lines(one_file_source / "events_sample.json", [event(10, "2024-01-02T05:00:00Z")])
    objects = [("events_sample.json", one_file_source / "events_sample.json")]
    load_partition(EVENTS, D2, objects, one_file=True)
    assert partition_counts("staging.event") == {D1: 2, D2: 1}
    assert query("select event_id from staging.event where date = %s", (D2,)) == [("e10",)]
    assert partition_counts("staging.event_rejected") == {D1: 2}


def test_daily_layout_waits_for_a_missing_day(database_url, tmp_path, monkeypatch, settings):
    source = tmp_path / "source"
    write_lines(source / "events/date=2024-01-01/part-0.json", [event(1, "2024-01-01T10:00:00Z")])
    write_lines(source / "events/date=2024-01-01/part-1.json.gz", [event(2, "2023-12-31T23:00:00Z")], gz=True)
    write_lines(source / "events/date=2024-01-02/part-0.json", [event(3, "2024-01-03T10:00:00Z")])
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", D1.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")

    result = run(LoadHistory(date=D3))
    assert result.status == luigi.LuigiStatusCode.MISSING_EXT
    # Everything in a day's objects belongs to that day, whatever its timestamp; no empty D3.
    assert partition_counts("staging.event") == {D1: 2, D2: 1}
    assert query("select source_key, line_number from staging.event where event_id = 'e2'") == [
        ("events/date=2024-01-01/part-1.json.gz", 1)
    ]
    assert not os.path.exists(database.config.partition_path("raw", "events", D3))


def test_over_the_reject_ratio_the_partition_fails_but_rejects_stay(database_url, tmp_path, monkeypatch, settings):
    source = tmp_path / "source"
    lines = [event(n, "2024-01-01T10:00:00Z") for n in range(1, 9)] + [b"oops", {"id": "x"}]
    path = write_lines(source / "events/date=2024-01-01/part-0.json", lines)
    settings("source", events_key="events/date={date}/")
    with pytest.raises(RejectRatioExceeded) as failure:
        load_partition(EVENTS, D1, [("events/date=2024-01-01/part-0.json", path)], one_file=False)
    message = str(failure.value)
    assert "part-0.json" in message and "line 9" in message and "line 10" in message
    assert "max_reject_ratio" in message and "2 of 10" in message
    assert partition_counts("staging.event") == {}
    assert partition_counts("staging.event_rejected") == {D1: 2}
    assert query("select count(*) from etl.marker")[0][0] == 0

    settings("etl", max_reject_ratio=0.2)  # the setting the message names lets the same data in
    load_partition(EVENTS, D1, [("events/date=2024-01-01/part-0.json", path)], one_file=False)
    assert partition_counts("staging.event") == {D1: 8}


def test_missing_one_file_source_fails_with_a_clear_message(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_SOURCE_URL", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ETL_HISTORY_START", D1.isoformat())
    result = run(LoadHistory(date=D1))
    assert result.status == luigi.LuigiStatusCode.FAILED
    assert database.marked_dates(EVENTS.table, [D1]) == set()


def test_same_date_twice_at_once_loads_once(database_url, tmp_path):
    lines = [event(n, "2024-01-01T10:00:00Z") for n in range(5000)]
    path = write_lines(tmp_path / "events.json", lines)
    objects = [("events.json", path)]
    errors = []

    def load(date):
        try:
            load_partition(EVENTS, date, objects, one_file=False)
        except Exception as err:  # pragma: no cover - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=load, args=(d,)) for d in (D1, D1, D2, D1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert partition_counts("staging.event") == {D1: 5000, D2: 5000}
    assert query("select count(distinct load_id) from staging.event where date = %s", (D1,))[0][0] == 1


KILL_SCRIPT = """
import sys, datetime
from pathlib import Path
from tasks.load import EVENTS, load_partition
load_partition(EVENTS, datetime.date(2024, 1, 1), [("big.json", Path(sys.argv[1]))], one_file=False)
"""


def test_loader_killed_mid_copy_leaves_the_old_partition(database_url, tmp_path):
    small = write_lines(tmp_path / "small.json", [event(n, "2024-01-01T10:00:00Z") for n in range(10)])
    load_partition(EVENTS, D1, [("small.json", small)], one_file=False)
    big = write_lines(tmp_path / "big.json", [event(n, "2024-01-01T10:00:00Z", pad="x" * 200) for n in range(200_000)])

    loader = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(big)], cwd=ROOT, env=os.environ.copy())
    try:
        # Wait for COPY to be under way (a condition, not a fixed delay), then kill without warning.
        copying = False
        while loader.poll() is None and not copying:
            copying = query(
                "select count(*) from pg_stat_progress_copy where relid = 'staging.event'::regclass"
                " and tuples_processed > 0"
            )[0][0] > 0
        assert copying, "the loader ended before its COPY was seen"
        loader.send_signal(signal.SIGKILL)
    finally:
        loader.wait()
    assert loader.returncode == -signal.SIGKILL
    # The server rolls the dead session back: the old partition and its marker are intact.
    assert partition_counts("staging.event") == {D1: 10}
    assert query("select row_count from etl.marker where partition_date = %s", (D1,)) == [(10,)]

    load_partition(EVENTS, D1, [("big.json", big)], one_file=False)
    assert partition_counts("staging.event") == {D1: 200_000}
    assert query("select count(distinct event_id) from staging.event")[0][0] == 200_000
    assert query("select row_count from etl.marker where partition_date = %s", (D1,)) == [(200_000,)]


def test_download_is_recorded_with_its_source_keys(database_url, one_file_source):
    run(LoadEvents(date=D1))
    folder = database.config.partition_path("raw", "events", D1)
    assert [(key, path.read_bytes()) for key, path in downloaded(folder)] == [
        ("events_sample.json", (one_file_source / "events_sample.json").read_bytes())
    ]


def test_cli_malformed_date_is_one_line():
    result = run_cli("load", "2024-02-30")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "2024-02-30" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_exits_non_zero_when_a_task_fails(database_url, tmp_path):
    result = run_cli("load", "2024-01-02", env={"ETL_SOURCE_URL": str(tmp_path / "nowhere"), "ETL_HISTORY_START": "2024-01-01"})
    assert result.returncode == 30, result.stderr[-2000:]
    assert "not found" in result.stderr


def test_a_second_entry_of_an_organization_is_rejected(database_url, tmp_path):
    path = write_lines(tmp_path / "orgs.json", [{"organization_key": "o1"}, {"organization_key": "o2"},
                                                {"organization_key": "o1", "organization_name": "again"}])
    from tasks.load import ORGANIZATIONS

    with pytest.raises(RejectRatioExceeded):
        load_partition(ORGANIZATIONS, D1, [("orgs.json", path)], one_file=False)
    assert query("select line_number, reason from staging.organization_rejected") == [
        (3, "duplicate organization_key (first at orgs.json line 1)")
    ]
