"""The whole chain, download to cohort CSV, against the contract's definition of the report.

Each test runs real dbt builds on a real PostgreSQL; expected reports come from the contract's
worked example or from tests/cohort_oracle.py, an independent implementation of section 6.
"""

import datetime
import gzip
import json

import luigi
import pytest

from tasks import completion, config, db, overwrite
from tasks.export import report_path
from tasks.load import LoadHistory
from tasks.workflows import RunEtl

import cohort_oracle
from conftest import ROOT, query, run_cli, write_lines

pytestmark = pytest.mark.slow

WORKED_EXAMPLE = """\
{"id":"e1","event_type":"user_created","user_id":"u1","organization_id":"o1","username":"ana","received_at":"2024-01-05T09:00:00Z"}
{"id":"e2","event_type":"user_created","user_id":"u2","organization_id":"o1","username":"ben","received_at":"2024-01-20T12:30:00+02:00"}
{"id":"e3","event_type":"user_created","user_id":"u3","organization_id":"o2","username":"cy","received_at":"2024-02-01T01:00:00+02:00"}
{"id":"e4","event_type":"user_updated","user_id":"u1","username":"ana.b","received_at":"2024-02-03T08:00:00Z"}
{"id":"e5","event_type":"user_deleted","user_id":"u2","received_at":"2024-02-10T00:00:00Z"}
{"id":"e5","event_type":"user_deleted","user_id":"u2","received_at":"2024-02-10T00:00:00Z"}
{"id":"e6","event_type":"user_created","user_id":"u4","organization_id":"o2","username":"dee","received_at":"2024-02-14T16:45:00Z"}
{"id":"e7","event_type":"user_deleted","user_id":"u3","received_at":"2024-03-02T10:00:00Z"}
{"id":"e8","event_type":"user_deleted","user_id":"u9","received_at":"2024-03-03T10:00:00Z"}
{"id":"e9","event_type":"user_created","user_id":"u3","organization_id":"o2","username":"cy","received_at":"2024-03-04T11:00:00Z"}
{"id":"e10","event_type":"user_created","user_id":"u5","organization_id":"o1","username":"eve","received_at":"2024-03-05T23:30:00-01:00"}
"""

REPORT_2024_03_05 = """\
cohort_month,months_since_signup,cohort_size,active_users,retention_rate
2024-01,0,3,3,1.0000
2024-01,1,3,2,0.6667
2024-01,2,3,2,0.6667
2024-02,0,1,1,1.0000
2024-02,1,1,1,1.0000
"""

ORGS = [
    {"organization_key": "o1", "organization_name": "One", "organization_tier": "pro"},
    {"organization_key": "o2", "organization_name": "Two", "organization_tier": "free"},
]


def run_etl(date):
    result = luigi.build([RunEtl(date=date)], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert result.status == luigi.LuigiStatusCode.SUCCESS, result.summary_text
    return report_path(date).read_text()


def table_state(table, order_by):
    return query(f"select md5(string_agg(t::text, '|' order by {order_by})), count(*) from {table} t")


def one_file_source(tmp_path, monkeypatch, events_text):
    source = tmp_path / "source"
    source.mkdir()
    (source / "events_sample.json").write_text(events_text)
    write_lines(source / "orgs_sample.json", ORGS)
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", "2024-01-01")
    return source


def test_contract_worked_example_both_dates(database_url, tmp_path, monkeypatch):
    one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)
    assert run_etl(datetime.date(2024, 3, 5)) == REPORT_2024_03_05
    assert run_etl(datetime.date(2024, 3, 6)) == REPORT_2024_03_05 + "2024-03,0,1,1,1.0000\n"
    assert query("select count(*) from reporting.cohort_summary where as_of_date = '2024-03-05'") == [(5,)]
    # u3: deleted, then created again; two lifecycle versions after the first, one current.
    assert query("select status, is_current from dimensional.dim_user where user_id = 'u3' order by valid_from") == [
        ("active", False),
        ("deleted", False),
        ("active", True),
    ]
    # The partial update keeps the fields it does not name.
    assert query("select username, organization_key from dimensional.dim_user where user_id = 'u1' and is_current") == [
        ("ana.b", "o1")
    ]
    assert query("select count(*), count(distinct event_id) from dimensional.fac_user") == [(10, 10)]


def test_bundled_sample_out_of_order_and_rerun(database_url, monkeypatch):
    monkeypatch.setenv("ETL_SOURCE_URL", str(ROOT / "data"))
    events = list(cohort_oracle.one_file_events(ROOT / "data" / "events_sample.json", "events_sample.json"))
    late, early = datetime.date(2024, 4, 30), datetime.date(2024, 2, 29)

    late_report = run_etl(late)
    assert late_report == cohort_oracle.report(events, late, config.history_start())
    assert run_etl(early) == cohort_oracle.report(events, early, config.history_start())  # run after a later date
    assert report_path(late).read_text() == late_report

    before = [
        table_state("staging.event", "date, object_number, line_number"),
        table_state("dimensional.fac_user", "event_id"),
        table_state("reporting.cohort_summary", "as_of_date, cohort_month, months_since_signup"),
    ]
    result = run_cli("run-etl", late.isoformat())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith(late_report)  # prints the path and the rows
    assert f"report {report_path(late)} (10 rows" in result.stdout
    assert "nothing to load: every partition was already loaded" in result.stdout
    assert "Did not run any tasks" in next((config.data_dir() / "logs").glob("run-*.log")).read_text()
    assert report_path(late).read_text() == late_report
    assert [
        table_state("staging.event", "date, object_number, line_number"),
        table_state("dimensional.fac_user", "event_id"),
        table_state("reporting.cohort_summary", "as_of_date, cohort_month, months_since_signup"),
    ] == before


def ndjson_gz(records) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0)


def test_daily_gzip_layout_over_s3(database_url, s3_bucket, monkeypatch, settings, tmp_path):
    client, bucket = s3_bucket
    days = {
        # Before history_start: never loaded, so u9 is in no cohort (nor in the oracle's report).
        "2024-01-29": [
            {"id": "a0", "event_type": "user_created", "user_id": "u9", "received_at": "2024-01-29T10:00:00Z"},
            {"id": "a9", "event_type": "user_created", "user_id": "u8", "received_at": "2024-01-29T11:00:00Z"},
        ],
        # Everything in a day's objects is that day's partition, whatever the timestamp says.
        "2024-01-30": [
            {"id": "a1", "event_type": "user_created", "user_id": "u1", "received_at": "2024-01-30T10:00:00Z"},
            {"id": "a2", "event_type": "user_created", "user_id": "u2", "received_at": "2024-01-31T23:30:00-02:00"},
        ],
        "2024-01-31": [
            {"id": "a3", "event_type": "user_deleted", "user_id": "u1", "received_at": "2024-02-01T00:00:00+01:00"},
            {"id": "a2", "event_type": "user_created", "user_id": "u2", "received_at": "2024-02-01T01:30:00Z"},
        ],
        "2024-02-01": [
            {"id": "a4", "event_type": "user_created", "user_id": "u1", "received_at": "2024-02-01T08:00:00Z"},
            {"id": "a5", "event_type": "user_created", "user_id": "u3", "received_at": "2024-02-02T08:00:00Z"},
            {"id": "a6", "event_type": "page_viewed", "user_id": "u3", "received_at": "2024-02-01T09:00:00Z"},
        ],
    }
    files = []
    for day, records in days.items():
        for part in (0, 1):
            key = f"events/date={day}/part-{part}.json.gz"
            client.put_object(Bucket=bucket, Key=key, Body=ndjson_gz(records[part::2]))
            local = tmp_path / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(ndjson_gz(records[part::2]))
            files.append((datetime.date.fromisoformat(day), key, local))
    client.put_object(Bucket=bucket, Key="orgs.json", Body="".join(json.dumps(o) + "\n" for o in ORGS).encode())
    monkeypatch.setenv("ETL_SOURCE_URL", f"s3://{bucket}")
    monkeypatch.setenv("ETL_HISTORY_START", "2024-01-30")
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")

    events = list(cohort_oracle.daily_events(files))
    for date in (datetime.date(2024, 1, 31), datetime.date(2024, 2, 1)):
        expected = cohort_oracle.report(events, date, config.history_start())
        assert run_etl(date) == expected
    # u1 was deleted at 2024-01-31 23:00 UTC (an offset crossing the month) and created again;
    # u2 signed up 2024-02-01 01:30 UTC; u3's event is in partition 2024-02-01 but received after T.
    assert expected.splitlines()[1:] == ["2024-01,0,1,0,0.0000", "2024-01,1,1,1,1.0000", "2024-02,0,1,1,1.0000"]


def test_corrected_partition_is_corrected_in_every_layer(database_url, tmp_path, monkeypatch):
    source = one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)
    date = datetime.date(2024, 3, 5)
    run_etl(date)
    # The source of 2024-02-14 is corrected: e6 was a different user and e4's day had no event.
    corrected = WORKED_EXAMPLE.replace(
        '"user_id":"u4","organization_id":"o2","username":"dee"',
        '"user_id":"u7","organization_id":"o1","username":"gus"',
    )
    (source / "events_sample.json").write_text(corrected)
    for day in (datetime.date(2024, 2, 14),):
        overwrite.invalidate(day)
    events = list(cohort_oracle.one_file_events(source / "events_sample.json", "events_sample.json"))
    assert run_etl(date) == cohort_oracle.report(events, date, config.history_start())
    assert query("select user_id from historical.hist_user_event where event_id = 'e6'") == [("u7",)]
    assert query("select count(*) from dimensional.dim_user where user_id = 'u4'") == [(0,)]
    assert query("select username from dimensional.dim_user where user_id = 'u7'") == [("gus",)]
    assert query("select user_id from dimensional.fac_user where event_id = 'e6'") == [("u7",)]
    assert query("select count(*) from historical.hist_user_event") == [(9,)]  # e10 is partition 03-06


def test_a_failing_data_test_stops_the_run_before_the_report(database_url, tmp_path, monkeypatch):
    one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)
    date = datetime.date(2024, 3, 5)
    assert luigi.build([LoadHistory(date=date)], local_scheduler=True, log_level="WARNING")
    # An event without user_id behind the loader's back: hist_user_event's not_null test must stop dbt.
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("""
            insert into staging.event (date, object_number, line_number, event_id, received_at, json_content, load_id)
            select date, object_number, 99, 'bad', received_at, json_content - 'user_id', load_id
            from staging.event where event_id = 'e1'
        """)
    result = luigi.build([RunEtl(date=date)], local_scheduler=True, detailed_summary=True, log_level="WARNING")
    assert result.status == luigi.LuigiStatusCode.FAILED
    assert not report_path(date).exists()
    assert completion.BUILDS.done([date]) == set()
    assert "FAIL" in (config.data_dir() / "logs" / f"dbt_build_{date}_{date}.log").read_text()
