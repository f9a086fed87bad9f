"""Staging loads against a real PostgreSQL: exact counts, rejects, one pass per object, batches,
idempotence, atomicity, locks."""

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import luigi
import psycopg2
import pytest

from tasks import completion, console, db, extract, load, overwrite, staging
from tasks.load import LoadEvents, LoadFailed, LoadHistory, load_partitions

from conftest import EVENT_WITH_KEY, ROOT, query, run_cli, wait_for, write_lines

D1, D2, D3 = datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)
EVENTS = staging.EVENTS


def event(number, received_at, **extra):
    return {
        "id": f"e{number}",
        "event_type": "user_created",
        "user_id": f"u{number}",
        "received_at": received_at,
        **extra,
    }


def run(*tasks, workers=1):
    return luigi.build(list(tasks), local_scheduler=True, detailed_summary=True, log_level="WARNING", workers=workers)


def partition_counts(table):
    return dict(query(f"select date, count(*) from {table} group by date order by date"))


def ledger(table="staging.event_partition"):
    return query(f"select partition_date, row_count, reject_count from {table} order by 1")


def fingerprint():
    """Everything staging and its ledgers hold, so that a re-run can be shown to change nothing."""
    tables = [
        "staging.event",
        "staging.organization",
        "staging.event_rejected",
        "staging.event_source_object",
        "staging.organization_source_object",
        "staging.event_partition",
        "staging.organization_partition",
        "etl.download",
    ]
    return {t: query(f"select md5(string_agg(t::text, '|' order by t::text)), count(*) from {t} t") for t in tables}


@pytest.fixture
def one_file_source(tmp_path, monkeypatch, settings):
    """A one-file source over three days, with duplicates, offsets and bad lines of every kind."""
    source = tmp_path / "source"
    write_lines(
        source / "events_sample.json",
        [
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
        ],
    )
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
        2024, 1, 1, 23, tzinfo=datetime.UTC
    )
    assert ledger() == [(D1, 2, 2), (D2, 2, 3), (D3, 1, 4)]


def test_lines_dated_before_history_start_are_named_not_loaded(database_url, one_file_source):
    # A later history_start than the data's first day dropped its earlier lines without a word.
    with open(one_file_source / "events_sample.json", "a") as out:
        out.write(
            '{"id": "e0", "event_type": "user_created", "user_id": "u0", "received_at": "2023-12-31T10:00:00Z"}\n'
        )
        out.write('{"id": "e00", "received_at": "2023-12-31T11:00:00Z"}\n')  # a reject of that day: not recorded
    result = run_cli("load", D3.isoformat())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    message = f"events_sample.json: 2 line(s) dated before history_start {D1} are not loaded (ETL_HISTORY_START"
    assert result.stdout.count(message) == 1
    assert partition_counts("staging.event") == {D1: 2, D2: 2, D3: 1}


def test_a_one_file_object_is_read_once_for_every_date(database_url, one_file_source, monkeypatch):
    opened = []
    real_open = extract.Source.open
    monkeypatch.setattr(extract.Source, "open", lambda self, obj: opened.append(obj.key) or real_open(self, obj))
    assert run(LoadHistory(date=D3)).status == luigi.LuigiStatusCode.SUCCESS
    # One pass per object for the three dates: Luigi batched each task family into one run.
    assert sorted(opened) == ["events_sample.json", "orgs_sample.json"]
    assert query(f"select distinct source_key from {EVENT_WITH_KEY}") == [("events_sample.json",)]
    # The object was landed once, not once per date.
    raw = extract.landing_folder("events")
    assert [path.name for path in raw.rglob("*") if path.is_file()] == ["events_sample.json"]


def test_rerun_changes_nothing_and_checks_completion_in_bulk(database_url, one_file_source, monkeypatch):
    run(LoadHistory(date=D3))
    before = fingerprint()
    checks = []
    monkeypatch.setattr(staging.completion.LedgerTarget, "exists", lambda self: checks.append(self) or True)
    result = run(LoadHistory(date=D3))
    assert result.status == luigi.LuigiStatusCode.SUCCESS
    assert checks == []  # no completion query per date: one query per ledger answered for the range
    assert fingerprint() == before


def test_a_load_asks_afresh_what_another_process_removed(database_url, one_file_source):
    # A long-lived worker remembers which partitions it saw done; a FORCE in another process then
    # removes one. When luigid hands this worker the load, it must load the partition again.
    run(LoadHistory(date=D3))
    loaded = partition_counts("staging.event")
    assert EVENTS.ledger.done([D1, D2, D3]) == {D1, D2, D3}
    with contextlib.closing(psycopg2.connect(database_url)) as other, other, other.cursor() as cur:
        cur.execute("delete from staging.event where date = %s", (D2,))
        cur.execute("delete from staging.event_partition where partition_date = %s", (D2,))
    # As the worker luigid hands the task to runs it: no completion check of its own first.
    task = LoadEvents(date=D2)
    task.set_status_message = task.set_progress_percentage = lambda *_: None
    task.run()
    assert query("select count(*) from staging.event_partition where partition_date = %s", (D2,)) == [(1,)]
    assert partition_counts("staging.event") == loaded


def test_reloading_a_partition_replaces_it(database_url, one_file_source):
    run(LoadHistory(date=D2))
    write_lines(one_file_source / "events_sample.json", [event(10, "2024-01-02T05:00:00Z")])
    overwrite.invalidate(D2)
    assert run(LoadHistory(date=D2)).status == luigi.LuigiStatusCode.SUCCESS
    assert partition_counts("staging.event") == {D1: 2, D2: 1}
    assert query("select event_id from staging.event where date = %s", (D2,)) == [("e10",)]
    assert partition_counts("staging.event_rejected") == {D1: 2}
    assert [row[0] for row in query("select load_id from staging.event where date = %s", (D2,))] == [
        query("select load_id from staging.event_partition where partition_date = %s", (D2,))[0][0]
    ]


def test_staging_tables_skip_the_vacuum_after_inserts_alone(database_url, one_file_source):
    # It would let the next load scatter its date over every page (tasks/staging.py, _IN_LOAD_ORDER).
    assert run(LoadHistory(date=D3)).status == luigi.LuigiStatusCode.SUCCESS
    for table in (staging.EVENTS.table, staging.ORGANIZATIONS.table):
        (options,) = query("select reloptions from pg_class where oid = %s::regclass", (table.name,))[0]
        assert "autovacuum_vacuum_insert_threshold=-1" in options


def test_a_load_of_many_dates_keeps_the_date_index_summarised(database_url, one_file_source, monkeypatch):
    # Else each date's delete reads every page the dates before it wrote (load._DateIndex).
    days = (D1, D2, D3)
    # 2.6 MB: ranges of pages enough that some stay unsummarised without _DateIndex
    lines = [event(n, f"{days[n % 3]}T10:00:00Z", pad="x" * 100) for n in range(12_000)]
    write_lines(one_file_source / "events_sample.json", lines)
    monkeypatch.setattr(load, "SUMMARIZE_ROWS", 1)
    summarised_with = []  # the dates staging held at each summary of the load

    def summarize_date_index(cur, table):
        if table.name == EVENTS.table.name:
            cur.execute(f"select array_agg(distinct date order by date) from {table.name}")
            summarised_with.append(cur.fetchone()[0])
        return summarize(cur, table)

    summarize = staging.summarize_date_index
    monkeypatch.setattr(staging, "summarize_date_index", summarize_date_index)
    assert run(LoadHistory(date=D3)).status == luigi.LuigiStatusCode.SUCCESS
    # Summarised between dates, so that the next date's delete skips the pages before it ...
    assert summarised_with[:2] == [[D1], [D1, D2]]
    # ... and after the last: nothing is left (without _DateIndex, the ranges this load wrote).
    assert query("select brin_summarize_new_values(%s::regclass)", (EVENTS.table.date_index,)) == [(0,)]


def test_a_busy_date_index_does_not_fail_a_load(database_url, one_file_source, monkeypatch):
    # Summarising during a load is only a saving (load._DateIndex): while a vacuum, or another
    # load's summary, holds the index, the load goes on without it.
    monkeypatch.setattr(load, "SUMMARIZE_ROWS", 1)
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=10s")  # a wait for the lock fails instead of hanging
    download([D1, D2, D3])
    with db.transaction() as first:
        staging.ensure_tables(first)
    with db.transaction() as vacuum, vacuum.cursor() as cur:
        cur.execute(f"lock table {EVENTS.table.name} in share update exclusive mode")  # what vacuum holds
        loaded = load_partitions(EVENTS, [D1, D2, D3], route_by_day=True)
    assert [partition.date for partition in loaded] == [D1, D2, D3]
    assert partition_counts("staging.event") == {D1: 2, D2: 2, D3: 1}


def test_a_load_does_not_wait_for_the_loads_still_open(database_url):
    # Every load starts with staging.ensure_tables; it must not queue behind another load's open
    # COPY (of any dataset), or loads of different dates and datasets would run one at a time.
    with db.transaction() as first:
        staging.ensure_tables(first)
    with db.transaction() as open_load, open_load.cursor() as cur:
        for table in staging.TABLES:
            cur.execute(f"lock table {table.name} in row exclusive mode")  # what a COPY holds
        with db.transaction() as second, second.cursor() as cur:
            cur.execute("set local lock_timeout = '100ms'")  # fails at once rather than waits
            staging.ensure_tables(second)
            cur.execute("select schemaname || '.' || indexname, indexdef from pg_indexes where schemaname = 'staging'")
            definitions = dict(cur.fetchall())
    for table in staging.TABLES:
        kind = "USING brin (date) WITH (autosummarize='on')" if table.in_load_order else "USING btree (date)"
        assert definitions[table.date_index].endswith(kind)
    assert staging.EVENTS.table.in_load_order and not staging.EVENTS.rejected.in_load_order


@pytest.fixture
def daily_source(tmp_path, monkeypatch, settings):
    source = tmp_path / "source"
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", D1.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    return source


def test_daily_layout_waits_for_a_missing_day(database_url, daily_source):
    write_lines(daily_source / "events/date=2024-01-01/part-0.json", [event(1, "2024-01-01T10:00:00Z")])
    write_lines(daily_source / "events/date=2024-01-01/part-1.json.gz", [event(2, "2023-12-31T23:00:00Z")], gz=True)
    write_lines(daily_source / "events/date=2024-01-02/part-0.json", [event(3, "2024-01-03T10:00:00Z")])

    result = run(LoadHistory(date=D3))
    assert result.status == luigi.LuigiStatusCode.MISSING_EXT
    # Everything in a day's objects belongs to that day, whatever its timestamp; no empty D3.
    assert partition_counts("staging.event") == {D1: 2, D2: 1}
    assert query(f"select source_key, line_number from {EVENT_WITH_KEY} where event_id = 'e2'") == [
        ("events/date=2024-01-01/part-1.json.gz", 1)
    ]
    assert query("select count(*) from etl.download where dataset = 'events' and partition_date = %s", (D3,)) == [(0,)]


def test_a_daily_organization_list_not_there_yet_is_waited_for(database_url, daily_source, settings):
    # It failed the download as a wrong key would ("not found: check … the key", exit 30).
    settings("source", orgs_key="orgs/date={date}.json")
    for day in (D1, D2):
        write_lines(daily_source / f"events/date={day}/part-0.json", [event(day.day, f"{day}T10:00:00Z")])
    write_lines(daily_source / f"orgs/date={D1}.json", [{"organization_key": "o1"}])
    result = run_cli("load", D2.isoformat())
    assert result.returncode == 20, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"waiting: OrganizationsArrived({D2}) has not arrived: orgs/date={D2}.json" in result.stdout
    assert partition_counts("staging.organization") == {D1: 1}
    write_lines(daily_source / f"orgs/date={D2}.json", [{"organization_key": "o1"}, {"organization_key": "o2"}])
    assert run_cli("load", D2.isoformat()).returncode == 0
    assert partition_counts("staging.organization") == {D1: 1, D2: 2}


def test_staging_with_a_key_on_every_row_is_upgraded_in_place(database_url, daily_source):
    # Tables made before the source objects held each row's key (staging._number_source_objects).
    write_lines(daily_source / "events/date=2024-01-01/part-1.json", [event(1, "2024-01-01T10:00:00Z")])
    write_lines(daily_source / "events/date=2024-01-01/part-0.json", [event(2, "2024-01-01T10:00:00Z")] * 2)
    write_lines(daily_source / "events/date=2024-01-02/part-0.json", [event(3, "2024-01-02T10:00:00Z")])
    assert run(LoadHistory(date=D2)).status == luigi.LuigiStatusCode.SUCCESS
    rows = f"select date, source_key, line_number, event_id, object_number from {EVENT_WITH_KEY} order by 1, 2, 3"
    before = query(rows)
    assert [row[1:] for row in before if row[0] == D1] == [
        ("events/date=2024-01-01/part-0.json", 1, "e2", 0),
        ("events/date=2024-01-01/part-0.json", 2, "e2", 0),
        ("events/date=2024-01-01/part-1.json", 1, "e1", 1),
    ]
    with db.transaction() as conn, conn.cursor() as cur:
        for dataset in staging.DATASETS:
            table, objects = dataset.table.name, dataset.objects_table
            cur.execute(f"alter table {table} add column source_key text")
            cur.execute(
                f"update {table} as staged set source_key = object.source_key from {objects} as object"
                " where (object.date, object.object_number) = (staged.date, staged.object_number)"
            )
            cur.execute(f"alter table {table} alter column source_key set not null, drop column object_number")
            cur.execute(f"drop table {objects}")

    for _ in range(2):  # the second finds nothing left to upgrade
        with contextlib.closing(db.connect()) as conn:
            staging.ensure_tables(conn)
            conn.commit()
        assert query(rows) == before
    assert query("select count(*) from staging.organization_source_object") == [(2,)]  # orgs.json, for D1 and D2
    write_lines(daily_source / "events/date=2024-01-03/part-0.json", [event(4, "2024-01-03T10:00:00Z")])
    assert run(LoadHistory(date=D3)).status == luigi.LuigiStatusCode.SUCCESS
    assert query(f"select source_key from {EVENT_WITH_KEY} where date = %s", (D3,)) == [
        ("events/date=2024-01-03/part-0.json",)
    ]


def download(days):
    assert run(*(extract.DownloadEvents(day) for day in days)).status == luigi.LuigiStatusCode.SUCCESS


def test_a_load_whose_download_a_forced_run_took_says_so(database_url, one_file_source):
    # FORCE=1 of D3 downloads the earlier dates not loaded with it (same objects): a run that had
    # downloaded them and was about to load them finds no download recorded
    download([D1, D2, D3])
    overwrite.invalidate(D3)
    with pytest.raises(extract.SourceError) as failed:
        load_partitions(EVENTS, [D1, D2], route_by_day=True)
    assert str(failed.value) == (
        f"no download recorded for events {D1} … {D2} (2 dates): a FORCE=1 run removed it after this run's"
        " download, to download it again; run this command again"
    )


def test_a_forced_run_waits_for_a_load_of_its_date_then_reloads_it(database_url, daily_source):
    # A run loading D from its download while FORCE=1 of D downloaded the corrected object: the
    # run committed the old rows after the forced run's invalidation, and the forced run's load,
    # finding D loaded, left them: the correction was lost and both runs exited 0.
    objects = daily_source / f"events/date={D1}"
    holder, old_load, failed = _a_load_waiting_for_its_partition(database_url, objects)
    # the forced run: its invalidation waits for the partition too, then downloads the correction
    forced = threading.Thread(target=overwrite.invalidate, args=(D1,))
    forced.start()
    wait_for(lambda: query(WAITING_FOR_LOCKS) == [(2,)])
    holder.rollback()  # the old load takes the partition first, and finds its download still there
    old_load.join()
    forced.join()
    holder.close()
    write_lines(objects / "part-1.json", [event(n, f"{D1}T11:00:00Z") for n in range(10, 15)])
    download([D1])
    load_partitions(EVENTS, [D1], route_by_day=False)
    assert failed == []  # it came first: committed, then the forced run took its ledger row
    assert partition_counts("staging.event") == {D1: 15}


@pytest.mark.parametrize("same_size", [False, True], ids=["another-object", "same-size"])
def test_a_load_whose_download_changed_meanwhile_commits_nothing(database_url, daily_source, same_size):
    objects = daily_source / f"events/date={D1}"
    holder, old_load, failed = _a_load_waiting_for_its_partition(database_url, objects)
    # a forced run whose invalidation came before this load reached the partition (while it read
    # the source, say): D1's download removed, and made again from the corrected objects
    other = psycopg2.connect(database_url)
    with other, other.cursor() as cur:
        cur.execute("delete from etl.download where dataset = 'events' and partition_date = %s", (D1,))
    other.close()
    completion.DOWNLOADS.forget()  # as overwrite.invalidate does
    if same_size:  # other users, the same number of bytes: only the object's time tells
        write_lines(objects / "part-0.json", [event(n, f"{D1}T10:00:00Z", user_id=f"w{n}") for n in range(10)])
        os.utime(objects / "part-0.json", ns=(10**18, 10**18))
    else:
        write_lines(objects / "part-1.json", [event(n, f"{D1}T11:00:00Z") for n in range(10, 15)])
    download([D1])
    holder.rollback()
    old_load.join()
    holder.close()
    assert [str(err) for err in failed] == [
        f"staging.event {D1}: its download changed while this run read it (made again by a FORCE=1 run, or by"
        " another run that found other objects); nothing of it is committed here: run this command again"
    ]
    assert staging.EVENTS.ledger.done([D1]) == set()
    load_partitions(EVENTS, [D1], route_by_day=False)  # the forced run's own load
    users = query("select json_content->>'user_id' from staging.event order by 1")
    assert users == sorted((f"w{n}",) if same_size else (f"u{n}",) for n in range(10 if same_size else 15))


def test_a_forced_run_ahead_of_a_load_of_many_dates_takes_their_earlier_dates(database_url, one_file_source):
    # One pass of a one-file object for D1 … D3 (its rows wait in the spool) while FORCE=1 of D2
    # removes D2's download and D1's (not loaded, the same object): the forced run reached the
    # partitions first, so the load commits nothing of D1 and D2, and D3 as it read it.
    download([D1, D2, D3])
    holder = psycopg2.connect(database_url)
    with holder.cursor() as cur:
        db.lock_partition(cur, EVENTS.table.name, D2)
    forced = threading.Thread(target=overwrite.invalidate, args=(D2,))
    forced.start()
    wait_for(lambda: query(WAITING_FOR_LOCKS) == [(1,)])  # it holds D1's lock and waits for D2's
    failed = []
    many = threading.Thread(
        target=lambda: failed.extend(_raised(lambda: load_partitions(EVENTS, [D1, D2, D3], route_by_day=True)))
    )
    many.start()
    wait_for(lambda: query(WAITING_FOR_LOCKS) == [(2,)])  # the load read every line and waits for D1's
    holder.rollback()
    forced.join()
    many.join()
    holder.close()
    assert [type(err) for err in failed] == [LoadFailed]
    assert str(failed[0]).splitlines() == [
        f"staging.event {day}: its download changed while this run read it (made again by a FORCE=1 run, or by"
        " another run that found other objects); nothing of it is committed here: run this command again"
        for day in (D1, D2)
    ]
    assert ledger() == [(D3, 1, 4)]
    download([D1, D2])  # the forced run's own download and load
    load_partitions(EVENTS, [D1, D2], route_by_day=True)
    assert ledger() == [(D1, 2, 2), (D2, 2, 3), (D3, 1, 4)]


WAITING_FOR_LOCKS = "select count(*) from pg_locks where locktype = 'advisory' and not granted"


def _a_load_waiting_for_its_partition(database_url, objects) -> tuple:
    """D1's 10 events downloaded, a session holding D1's partition lock, and a load of D1 that
    read its download and waits for the lock: (the holding session, the load's thread, the list
    its failure goes to)."""
    write_lines(objects / "part-0.json", [event(n, f"{D1}T10:00:00Z") for n in range(10)])
    download([D1])
    holder = psycopg2.connect(database_url)
    with holder.cursor() as cur:
        db.lock_partition(cur, EVENTS.table.name, D1)
    failed = []
    old_load = threading.Thread(
        target=lambda: failed.extend(_raised(lambda: load_partitions(EVENTS, [D1], route_by_day=False)))
    )
    old_load.start()
    wait_for(lambda: query(WAITING_FOR_LOCKS) == [(1,)])
    return holder, old_load, failed


def _raised(call) -> list:
    try:
        call()
    except Exception as err:
        return [err]
    return []


def test_over_the_reject_ratio_the_partition_fails_but_rejects_stay(database_url, daily_source, settings):
    lines = [event(n, "2024-01-01T10:00:00Z") for n in range(1, 9)] + [b"oops", {"id": "x"}]
    write_lines(daily_source / "events/date=2024-01-01/part-0.json", lines)
    write_lines(daily_source / "events/date=2024-01-02/part-0.json", [event(20, "2024-01-02T10:00:00Z")])
    download([D1, D2])
    with pytest.raises(LoadFailed) as failure:
        load_partitions(EVENTS, [D1, D2], route_by_day=False)
    message = str(failure.value)
    assert "part-0.json" in message and "line 9" in message and "line 10" in message
    assert "max_reject_ratio" in message and "2 of 10" in message
    assert "make run-etl DATE=2024-01-01 FORCE=1" in message  # a plain run would read the same download
    # The bad partition loaded no rows and has no ledger row; the good one of the same run committed.
    assert partition_counts("staging.event") == {D2: 1}
    assert partition_counts("staging.event_rejected") == {D1: 2}
    assert ledger() == [(D2, 1, 0)]

    settings("etl", max_reject_ratio=0.2)  # the setting the message names lets the same data in
    load_partitions(EVENTS, [D1], route_by_day=False)
    assert partition_counts("staging.event") == {D1: 8, D2: 1}


def test_a_run_summary_counts_no_partition_after_its_last_date(database_url, daily_source):
    # e.g. `run-etl` of D beside a backfill that loads later dates: those are not D's run's rows
    for day in (D1, D2, D3):
        write_lines(daily_source / f"events/date={day}/part-0.json", [event(day.day, f"{day}T10:00:00Z")])
    download([D1, D2, D3])
    [(started,)] = query("select clock_timestamp()")
    load_partitions(EVENTS, [D1, D2, D3], route_by_day=False)
    summary = console.summary([D2], started)
    assert (summary["loaded"], summary["rows"]) == (2, 2)


def test_a_run_summary_names_the_organizations_bad_lines(database_url, daily_source, settings):
    # The summary counted events only: "0 rejected lines" with organization rejects stored, and
    # "nothing to load" after a run that loaded the organizations alone.
    for day in (D1, D2):
        write_lines(daily_source / f"events/date={day}/part-0.json", [event(day.day, f"{day}T10:00:00Z")])
    orgs = [{"organization_key": f"o{n}"} for n in range(10)]
    write_lines(daily_source / "orgs.json", [*orgs, {"organization_key": "o1"}])  # line 11: a second o1
    refused = run_cli("load", D2.isoformat())
    assert refused.returncode == 30
    assert "  loaded 2 date(s) of events: 2 rows, 0 rejected lines\n" in refused.stdout
    assert (
        f"  not loaded: {D1} (1 rejected line), {D2} (1 rejected line), in staging.organization_rejected;"
        in refused.stdout
    )
    settings("etl", max_reject_ratio=0.2)
    alone = run_cli("load", D2.isoformat())
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-2000:]
    assert (
        "  loaded 2 date(s) of organizations: 20 rows, 1 rejected line"
        " (select * from staging.organization_rejected order by date, line_number)\n" in alone.stdout
    )
    assert "nothing to load" not in alone.stdout
    assert f"to load: {console.span([D1, D2])}\n" in alone.stdout  # it counted the events' dates only


def test_missing_one_file_source_fails_with_a_clear_message(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_SOURCE_URL", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ETL_HISTORY_START", D1.isoformat())
    result = run(LoadHistory(date=D1))
    assert result.status == luigi.LuigiStatusCode.FAILED
    assert staging.EVENTS.ledger.done([D1]) == set()


def test_same_dates_at_once_load_once(database_url, daily_source):
    for day in (D1, D2):
        write_lines(
            daily_source / f"events/date={day}/part-0.json", [event(n, f"{day}T10:00:00Z") for n in range(5000)]
        )
    download([D1, D2])
    errors = []

    def load(days):
        try:
            load_partitions(EVENTS, days, route_by_day=False)
        except Exception as err:  # pragma: no cover - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=load, args=(days,)) for days in ([D1], [D1, D2], [D2, D1], [D1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert partition_counts("staging.event") == {D1: 5000, D2: 5000}
    # Whoever waited for a partition's lock found it loaded and left it alone: one load each.
    assert query("select count(distinct load_id) from staging.event group by date") == [(1,), (1,)]


KILL_SCRIPT = """
import datetime
from tasks import staging
from tasks.load import load_partitions
load_partitions(staging.EVENTS, [datetime.date(2024, 1, 1)], route_by_day=False)
"""


def test_loader_killed_mid_copy_leaves_the_old_partition(database_url, daily_source):
    part = daily_source / "events/date=2024-01-01/part-0.json"
    write_lines(part, [event(n, "2024-01-01T10:00:00Z") for n in range(10)])
    download([D1])
    load_partitions(EVENTS, [D1], route_by_day=False)
    write_lines(part, [event(n, "2024-01-01T10:00:00Z", pad="x" * 200) for n in range(200_000)])
    overwrite.invalidate(D1)
    download([D1])

    loader = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT], cwd=ROOT, env=os.environ.copy())
    try:
        # Wait for COPY to be under way (a condition, not a fixed delay), then kill without warning.
        copying = False
        while loader.poll() is None and not copying:
            copying = (
                query(
                    "select count(*) from pg_stat_progress_copy where relid = 'staging.event'::regclass"
                    " and tuples_processed > 0"
                )[0][0]
                > 0
            )
        assert copying, "the loader ended before its COPY was seen"
        loader.send_signal(signal.SIGKILL)
    finally:
        loader.wait()
    assert loader.returncode == -signal.SIGKILL
    # The server rolls the dead session back: the old rows are intact, and no ledger row claims
    # a partition the loader did not finish (FORCE removed the old one), so the next run reloads.
    assert partition_counts("staging.event") == {D1: 10}
    assert ledger() == []

    load_partitions(EVENTS, [D1], route_by_day=False)
    assert partition_counts("staging.event") == {D1: 200_000}
    assert query("select count(distinct event_id) from staging.event")[0][0] == 200_000
    assert ledger() == [(D1, 200_000, 0)]


def test_download_is_recorded_with_its_source_keys(database_url, one_file_source):
    run(LoadEvents(date=D1))
    (objects,) = extract.downloaded("events", [D1]).values()
    assert [(obj.key, Path(obj.path).read_bytes()) for obj in objects] == [
        ("events_sample.json", (one_file_source / "events_sample.json").read_bytes())
    ]


def test_cli_malformed_date_is_one_line():
    result = run_cli("load", "2024-02-30")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "2024-02-30" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_exits_non_zero_when_a_task_fails(database_url, tmp_path):
    result = run_cli(
        "load", "2024-01-02", env={"ETL_SOURCE_URL": str(tmp_path / "nowhere"), "ETL_HISTORY_START": "2024-01-01"}
    )
    assert result.returncode == 30, result.stderr[-2000:]
    assert "not found" in result.stdout + result.stderr


def test_a_second_entry_of_an_organization_is_rejected(database_url, daily_source):
    write_lines(
        daily_source / "orgs.json",
        [
            {"organization_key": "o1"},
            {"organization_key": "o2"},
            {"organization_key": "o1", "organization_name": "again"},
        ],
    )
    for date in (D1, D2):
        assert run(extract.DownloadOrganizations(date)).status == luigi.LuigiStatusCode.SUCCESS
    with pytest.raises(LoadFailed, match="max_reject_ratio"):
        load_partitions(staging.ORGANIZATIONS, [D1, D2], route_by_day=False)  # one read for both dates
    assert query("select date, line_number, reason from staging.organization_rejected order by date") == [
        (date, 3, "duplicate organization_key (first at orgs.json line 1)") for date in (D1, D2)
    ]
