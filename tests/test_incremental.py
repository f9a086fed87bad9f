"""Incremental builds equal a build from scratch: the bundled sample delivered day by day (some
events a few days late, some twice), built by successive daily runs with forced reloads among them
(whose builds fail after the history until a later build catches up), gives the same warehouse,
row for row, as one first build of the same partitions."""

import contextlib
import datetime
import json

import luigi
import psycopg2
import pytest

from tasks import completion, config, db, overwrite, records, schemas, staging
from tasks.workflows import RebuildReports, RunEtl

from conftest import ROOT, query, with_dbname, write_lines

pytestmark = pytest.mark.slow

RUNS = [datetime.date(2024, 1, 20), datetime.date(2024, 2, 9), datetime.date(2024, 2, 29), datetime.date(2024, 3, 25)]
LAST = RUNS[-1]
# Every table a build writes, and the columns that say when or by which load rather than what.
TABLES = {
    "historical.hist_user_event": "event_id",
    "dimensional.dim_user": "user_key",
    "dimensional.fac_user": "event_id",
    "reporting.user_active_interval": "user_id, epoch_from, active_from",
    "reporting.active_interval_count": "epoch_from, epoch_to, signup_date, start_date, end_date, is_signup",
    "dimensional.dim_organization": "organization_version_key",
}
BOOKKEEPING = {"changed_at", "content_changed_at", "load_id"}
PROBE_VIEW, PROBE_CREATED = "evt_probe_view", "evt_probe_created"
KEPT_CREATED = "evt_kept_created"


def daily_source(folder):
    """The sample split into one object per day: every 17th event arrives two days late, and every
    23rd is delivered a second time the day after."""
    days, day = {}, datetime.date(2024, 1, 1)
    with open(ROOT / "data" / "events_sample.json", "rb") as stream:
        for line in records.read_lines(stream, "events_sample.json", records.EVENT_REQUIRED):
            day = line.day or day  # a line without a readable day goes where the file was
            late = 2 if line.number % 17 == 0 else 0
            days.setdefault(day + datetime.timedelta(days=late), []).append(line.raw)
            if line.number % 23 == 0:
                days.setdefault(day + datetime.timedelta(days=1), []).append(line.raw)
    # A user the correction of 2024-01-15 (correct_partition) takes the creation from, leaving an
    # earlier event of theirs with no version to belong to.
    probe = {"user_id": "usr_probe", "organization_id": "org_probe"}
    days.setdefault(datetime.date(2024, 1, 12), []).append(
        json.dumps({**probe, "id": PROBE_VIEW, "event_type": "page_viewed", "received_at": "2024-01-12T09:00:00Z"})
    )
    days.setdefault(datetime.date(2024, 1, 15), []).append(
        json.dumps({**probe, "id": PROBE_CREATED, "event_type": "user_created", "received_at": "2024-01-15T10:00:00Z"})
    )
    # A user whose creation the correction of 2024-01-15 leaves as it was (a line up, after the 5th
    # line's removal), and whose update arrives late, after the correction: the catch-up build
    # computes their versions again without the reload having changed them.
    kept = {"user_id": "usr_kept", "organization_id": "org_kept"}
    days[datetime.date(2024, 1, 15)].insert(
        5, json.dumps({**kept, "id": KEPT_CREATED, "event_type": "user_created", "received_at": "2024-01-15T08:00:00Z"})
    )
    days[datetime.date(2024, 1, 20)].append(
        json.dumps(
            {**kept, "id": "evt_kept_updated", "event_type": "user_updated", "received_at": "2024-01-20T08:00:00Z"}
        )
    )
    days[datetime.date(2024, 2, 12)].append(
        json.dumps({**kept, "id": "evt_kept_late", "event_type": "user_updated", "received_at": "2024-01-17T08:00:00Z"})
    )
    for day, lines in days.items():
        if day <= LAST:
            write_lines(folder / "events" / f"date={day}" / "part-0.json", lines)
    (folder / "orgs.json").write_bytes((ROOT / "data" / "orgs_sample.json").read_bytes())


def correct_partition(folder, day):
    """The partition of `day` corrected: every 5th line gone, the probe user's creation too, and the
    events also delivered on a later day (their first delivery moves there); and events first
    delivered on the days after it delivered in it too, one of them for another user and one with
    another name."""

    def part(date):
        return folder / "events" / f"date={date}" / "part-0.json"

    def record(line):
        return records.judge(0, line, records.EVENT_REQUIRED).record or {}

    path = part(day)
    lines = path.read_bytes().splitlines()
    later_parts = [part(day + datetime.timedelta(days=offset)) for offset in range(1, 6)]
    later = [
        record(line)
        for later_part in later_parts
        if later_part.exists()
        for line in later_part.read_bytes().splitlines()
    ]
    later = [event for event in later if event]
    delivered_later = {event["id"] for event in later}
    again = [line for line in lines if record(line).get("id") in delivered_later]
    assert again, "no event of the day is delivered again later"
    delivered_here = {record(line).get("id") for line in lines}
    moved = [event for event in later if event["id"] not in delivered_here][:6]
    moved[0]["user_id"] += "-moved"
    moved[1]["username"] = "renamed"
    kept = [
        line
        for number, line in enumerate(lines)
        if number % 5 != 4 and PROBE_CREATED.encode() not in line and line not in again
    ]
    write_lines(path, kept + [json.dumps(event).encode() for event in moved])


def column_names(table: str) -> list:
    return [
        name
        for (name,) in query(
            "select column_name from information_schema.columns where table_schema || '.' || table_name = %s"
            " order by ordinal_position",
            (table,),
        )
    ]


def contents(table: str, order: str) -> list:
    columns = [name for name in column_names(table) if name not in BOOKKEEPING]
    return query(f"select {', '.join(columns)} from {table} order by {order}")


def last_dbt_invocation_events() -> set:
    """The names of the events of the latest dbt invocation, from dbt's own log of this data_dir."""
    lines = (config.data_dir() / "logs" / "dbt.log").read_text().splitlines()
    events = [json.loads(line)["info"] for line in lines if line.startswith("{")]
    return {event["name"] for event in events if event["invocation_id"] == events[-1]["invocation_id"]}


def pad_dim_user(copies: int) -> None:
    """Copies of dim_user's closed versions under users of their own ('padding-…'), then analyze."""
    columns = column_names("dimensional.dim_user")
    made = {"user_key": "'padding-' || n || '-' || user_key", "user_id": "'padding-' || n"}
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(
            f"insert into dimensional.dim_user ({', '.join(columns)})"
            f" select {', '.join(made.get(c, c) for c in columns)}"
            " from dimensional.dim_user cross join generate_series(1, %s) as n where not is_current",
            (copies,),
        )
        cur.execute("analyze dimensional.dim_user")


@contextlib.contextmanager
def failing_inserts(table: str):
    """Every row inserted into `table` fails a check, until the block ends: a model's build fails."""
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(f"alter table {table} add constraint injected_fault check (false) not valid")
    try:
        yield
    finally:
        with db.transaction() as conn, conn.cursor() as cur:
            cur.execute(f"alter table {table} drop constraint injected_fault")


def run(date):
    result = luigi.build([RunEtl(date=date)], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert result.status == luigi.LuigiStatusCode.SUCCESS, result.summary_text


def rebuild(dates):
    """The run FORCE=1 makes after its invalidation: RunEtl of each of `dates`, in one build."""
    return luigi.build(
        [RebuildReports(sorted(dates))], local_scheduler=True, detailed_summary=True, log_level="WARNING"
    )


def test_daily_builds_equal_one_build_from_scratch(postgres_server, database_url, tmp_path, monkeypatch, settings):
    daily_source(tmp_path / "source")
    monkeypatch.setenv("ETL_SOURCE_URL", str(tmp_path / "source"))
    monkeypatch.setenv("ETL_HISTORY_START", "2024-01-01")
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    settings("etl", max_reject_ratio=0.5)
    for date in RUNS[:2]:
        run(date)
    # Corrected partitions in the middle: the history is reworked, and the layers after it
    # recompute the users it touched. Some of its events vanish; some events first delivered later
    # now come earlier, one of them for another user (the first delivery wins). The builds of both
    # corrections fail after the history, in dim_user; the next build catches up on both.
    kept_row = "select changed_at, load_id, line_number from historical.hist_user_event where event_id = %s"
    [(kept_at, kept_load, kept_line)] = query(kept_row, (KEPT_CREATED,))
    dates = set()
    with failing_inserts("dimensional.dim_user"):
        for day in (datetime.date(2024, 1, 15), datetime.date(2024, 1, 25)):
            correct_partition(tmp_path / "source", day)
            # as FORCE=1 does: the reports after it are built again, in one build
            _, rebuilt = overwrite.invalidate(day)
            dates |= {report.isoformat() for report in rebuilt if report in RUNS}
            assert rebuild(dates).status == luigi.LuigiStatusCode.FAILED
    # the history took in both reworks, and dim_user neither
    assert query(
        "select count(distinct changed_at) from historical.hist_user_event__reworked_user"
        " where changed_at > (select max(changed_at) from dimensional.dim_user)"
    ) == [(2,)]
    dates.add(RUNS[2].isoformat())
    result = rebuild(dates)
    assert result.status == luigi.LuigiStatusCode.SUCCESS, result.summary_text
    # A row whose event the correction did not change stays as it was written, in its new place.
    [(changed_at, load_id, line_number)] = query(kept_row, (KEPT_CREATED,))
    assert changed_at == kept_at and load_id != kept_load and line_number != kept_line
    # Versions of users with no events make dim_user's pages outnumber the changed users, as a long
    # history does: the last build looks their current versions up (stage_current_versions).
    pad_dim_user(copies=300)
    run(RUNS[3])
    assert query("select count(*) from pg_indexes where indexname = 'dim_user__current_user_id'") == [(1,)]
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("delete from dimensional.dim_user where user_id like 'padding-%'")
        assert cur.rowcount > 0
    incremental = {table: contents(table, order) for table, order in TABLES.items()}
    reports = query("select * from reporting.cohort_summary order by 1, 2, 3")
    # No build rebuilt the tables, the rework neither: rows of the first build are still there.
    assert query("select count(distinct changed_at) >= 3 from dimensional.dim_user") == [(True,)]
    assert query("select count(*) > 0 from historical.hist_user_event__reworked_user") == [(True,)]
    # and make clean knows every relation these builds made as the pipeline's own
    with db.transaction() as conn, conn.cursor() as cur:
        assert schemas.foreign_objects(cur) == []
    # Its dates and stamp differed from the run before's, and still dbt reused its saved parse.
    assert "PartialParsingEnabled" in last_dbt_invocation_events()
    # Each build summarised staging's date indexes over the pages loaded since (tasks/staging.py).
    for table in (staging.EVENTS.table, staging.ORGANIZATIONS.table):
        assert query("select brin_summarize_new_values(%s::regclass)", (table.date_index,)) == [(0,)]
    # Ids, keys and source keys compare byte by byte (S3's order), whatever the server's collation.
    assert (
        query(
            "select table_name, column_name from information_schema.columns where data_type = 'text'"
            " and table_schema || '.' || table_name in ('staging.event', 'staging.organization',"
            " 'staging.event_source_object', 'staging.organization_source_object',"
            " 'historical.hist_user_event') and collation_name is distinct from 'C'"
        )
        == []
    )

    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    fresh = f"{psycopg2.extensions.parse_dsn(database_url)['dbname']}_fresh"
    admin.cursor().execute(f'create database "{fresh}"')
    try:
        monkeypatch.setenv("ETL_DATABASE_URL", with_dbname(postgres_server, fresh))
        monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "fresh"))
        for ledger in (
            completion.DOWNLOADS,
            completion.BUILDS,
            completion.REPORTS,
            *(d.ledger for d in staging.DATASETS),
        ):
            ledger.forget()
        completion.close_checks()
        result = luigi.build([RunEtl(date=date) for date in RUNS], local_scheduler=True, log_level="WARNING")
        assert result
        for table, order in TABLES.items():
            assert contents(table, order) == incremental[table], table
        assert query("select * from reporting.cohort_summary order by 1, 2, 3") == reports
        completion.close_checks()
    finally:
        admin.cursor().execute(f'drop database "{fresh}" with (force)')
        admin.close()
    assert {row[0] for row in reports} == set(RUNS)
