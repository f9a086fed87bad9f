"""Operating the pipeline: luigid with history, backfill in parallel, forced reprocessing, clean."""

import datetime
import json
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import luigi
import psycopg2
import pytest

from tasks import config, console, db, export, overwrite, transform
from tasks.load import LoadHistory
from tasks.partitions import dates
from tasks.transform import BuildWarehouse
from tasks.workflows import Backfill, RunEtl
from tools import screenshot

from conftest import free_port, query, run_cli, start_cli, wait_for, write_lines
from test_report import REPORT_2024_03_05, WORKED_EXAMPLE, one_file_source

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def api(port, method, **data):
    query_string = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://localhost:{port}/api/{method}?{query_string}", timeout=10) as response:
        return json.load(response)["response"]


@pytest.fixture
def worked_example(tmp_path, monkeypatch):
    return one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)


def screenshot_of_finished_tasks(port: int, path: Path) -> list[str]:
    """Photograph the Luigi UI (as make docs does) and return the text of each task row."""
    from playwright.sync_api import sync_playwright

    screenshot.photograph(port, path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=screenshot.CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://localhost:{port}/static/visualiser/index.html#tab=tasks&family=RunEtl")
            page.wait_for_selector("tbody tr:has-text('RunEtl')", timeout=30_000)
            return [" ".join(row.split()) for row in page.locator("tbody tr").all_inner_texts()]
        finally:
            browser.close()


def test_luigid_backfill_history_and_clean(database_url, worked_example, settings, tmp_path):
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port)
    started = run_cli("luigid-start")
    assert started.returncode == 0, started.stderr
    try:
        result = run_cli("backfill", "2024-03-05", "2024-03-06", "--workers", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "using the local scheduler" not in result.stderr
        # A first backfill: its builds wrote every row and tested it, so no second pass over them.
        assert "warehouse tests: every row comes from this run's builds" in result.stdout
        done = api(port, "task_list", status="DONE")
        assert {
            "RunEtl(date=2024-03-05, loaded_through=2024-03-06)",
            "RunEtl(date=2024-03-06, loaded_through=2024-03-06)",
        } <= {task["display_name"] for task in done.values()}
        loads = [task for task in done.values() if task["name"] == "LoadEvents"]
        assert loads and all(" rows, " in (task["status_message"] or "") for task in loads)
        # Two workers, one build: no worker starts a build on the first dates loaded.
        assert query("select count(distinct built_at), count(*) from etl.build") == [(1, 2)]
        reports = tmp_path / "work" / "reports"
        assert (reports / "cohort_summary_2024-03-05.csv").read_text() == REPORT_2024_03_05
        assert (reports / "cohort_summary_2024-03-06.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if CHROMIUM:
            rows = screenshot_of_finished_tasks(port, tmp_path / "luigi-ui.png")
            run_etl = sorted(row for row in rows if "RunEtl" in row)
            assert len(run_etl) == 2 and all(row.startswith("DONE") for row in run_etl), rows
            assert "date=2024-03-05" in run_etl[0] and "date=2024-03-06" in run_etl[1]
            assert (tmp_path / "luigi-ui.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            warnings.warn(
                "chromium is not installed (make browser): the Luigi UI was not checked in a browser", stacklevel=1
            )

        # History outlives the scheduler: restart it and the runs are still recorded.
        assert run_cli("luigid-stop").returncode == 0
        assert query("select count(*) from etl.tasks where name = 'RunEtl'")[0][0] >= 2
        assert run_cli("luigid-start").returncode == 0
        with urllib.request.urlopen(f"http://localhost:{port}/history/by_name/RunEtl", timeout=10) as page:
            assert "2024-03-06" in page.read().decode()
    finally:
        run_cli("luigid-stop")

    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("create schema keep_me; create table keep_me.t (x int)")
    cleaned = run_cli("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "dropped schema staging" in cleaned.stdout and "dropped schema etl" in cleaned.stdout
    password = urllib.parse.urlsplit(database_url).password
    assert not password or password not in cleaned.stdout + cleaned.stderr
    schemas = {row[0] for row in query("select nspname from pg_namespace")}
    assert "keep_me" in schemas
    assert not schemas & {"staging", "historical", "snapshots", "dimensional", "reporting", "etl"}
    assert not (tmp_path / "work" / "reports").exists() and not (tmp_path / "work" / "luigid").exists()
    with pytest.raises(OSError):
        socket.create_connection(("localhost", port), timeout=1)


def test_force_reloads_a_date_and_invalidates_later_reports(database_url, worked_example):
    assert run_cli("run-etl", "2024-03-05").returncode == 0
    # The source for 2024-03-04 is corrected: u3 was not re-created that day after all.
    corrected = "\n".join(line for line in WORKED_EXAMPLE.splitlines() if '"id":"e9"' not in line) + "\n"
    (worked_example / "events_sample.json").write_text(corrected)
    expected = REPORT_2024_03_05.replace("2024-01,2,3,2,0.6667", "2024-01,2,3,1,0.3333")

    unchanged = run_cli("run-etl", "2024-03-05")
    assert unchanged.stdout.endswith(REPORT_2024_03_05)  # complete: nothing is re-read without FORCE
    forced = run_cli("run-etl", "2024-03-04", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "staging.event 2024-03-04 will be reloaded from the source" in forced.stdout
    # said after what the forced run removed (before it, every date was loaded: no line at all)
    assert forced.stdout.index("will be reloaded") < forced.stdout.index("to load: 2024-03-04\n")
    assert "reports after 2024-03-04 will be rebuilt too: 2024-03-05" in forced.stdout
    assert forced.stdout.endswith(expected)  # 2024-03-04's report: u3 not back yet, u5 not yet there
    assert query("select count(*) from historical.hist_user_event where event_id = 'e9'") == [(0,)]
    # The later report saw 03-04, so the same run rebuilt it: no stale report is left.
    assert (worked_example.parent / "work" / "reports" / "cohort_summary_2024-03-05.csv").read_text() == expected
    assert run_cli("run-etl", "2024-03-05").stdout.endswith(expected)


def test_a_failed_forced_run_leaves_no_report_its_records_no_longer_vouch_for(database_url, worked_example):
    assert run_cli("backfill", "2024-03-03", "2024-03-05").returncode == 0
    reports = worked_example.parent / "work" / "reports"
    assert (reports / "cohort_summary_2024-03-04.csv").exists() and (reports / "cohort_summary_2024-03-05.png").exists()
    # The "corrected" source of 2024-03-04 is worse: its day is now over max_reject_ratio.
    spoiled = WORKED_EXAMPLE.replace('{"id":"e9",', '{"id":9,')
    assert spoiled != WORKED_EXAMPLE
    (worked_example / "events_sample.json").write_text(spoiled)

    forced = run_cli("run-etl", "2024-03-04", "--force")
    assert forced.returncode == 30, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "removed the old report files of 2024-03-04, 2024-03-05 from" in forced.stdout
    # Its rejects are stored; the summary said "0 rejected lines" of the dates it did load.
    assert (
        "not loaded: 2024-03-04 (1 rejected line), in staging.event_rejected; the FAILED lines above say why"
        in forced.stdout
    )
    # The old files of both dates are gone with their etl.report records; the dates before stay.
    assert not list(reports.glob("cohort_summary_2024-03-0[45].*"))
    assert query("select count(*) from etl.report where run_date >= '2024-03-04'") == [(0,)]
    assert (reports / "cohort_summary_2024-03-03.csv").exists()
    # What is left to do is said, and does it once the source is right.
    assert (
        "the reports of 2024-03-04, 2024-03-05 were outdated by a reload (FORCE=1) and are not rebuilt yet:"
        " once any cause is fixed, `make run-etl DATE=2024-03-04 FORCE=1` rebuilds them" in forced.stdout
    )
    (worked_example / "events_sample.json").write_text(WORKED_EXAMPLE)
    finished = run_cli("run-etl", "2024-03-04", "--force")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert (reports / "cohort_summary_2024-03-05.csv").read_text() == REPORT_2024_03_05
    assert "outdated by a reload" not in finished.stdout and "not loaded" not in finished.stdout


# The worked example with 2024-03-04 corrected (u3 was not re-created that day), and its 03-05 report.
CORRECTED = "\n".join(line for line in WORKED_EXAMPLE.splitlines() if '"id":"e9"' not in line) + "\n"
CORRECTED_2024_03_05 = REPORT_2024_03_05.replace("2024-01,2,3,2,0.6667", "2024-01,2,3,1,0.3333")


def test_a_forced_run_killed_once_it_outdated_later_reports_is_finished_by_the_same_command(
    database_url, worked_example
):
    assert run_cli("backfill", "2024-03-03", "2024-03-05").returncode == 0
    reports = worked_example.parent / "work" / "reports"
    (worked_example / "events_sample.json").write_text(CORRECTED)
    # What a `run-etl 2024-03-04 --force` killed right after its first step leaves: no records of
    # 03-04 and 03-05, no report files, and nothing in any process's memory.
    overwrite.invalidate(datetime.date(2024, 3, 4))
    assert not list(reports.glob("cohort_summary_2024-03-0[45].*"))
    assert export.deliver([datetime.date(2024, 3, 5)]) == []  # a run that exported 03-05 before has none to show
    # A plain run of another date says what is left; the same forced command again does it.
    reminder = run_cli("run-etl", "2024-03-03")
    assert reminder.returncode == 0, reminder.stdout[-3000:] + reminder.stderr[-3000:]
    assert "the reports of 2024-03-04, 2024-03-05 were outdated by a reload" in reminder.stdout
    again = run_cli("run-etl", "2024-03-04", "--force")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reports after 2024-03-04 will be rebuilt too: 2024-03-05" in again.stdout
    assert (reports / "cohort_summary_2024-03-05.csv").read_text() == CORRECTED_2024_03_05
    assert query("select count(*) from etl.outdated_report") == [(0,)]


def test_builds_between_forces_removal_and_its_reload(database_url, worked_example):
    corrected_2024_03_06 = CORRECTED_2024_03_05 + "2024-03,0,1,1,1.0000\n"
    assert run_cli("run-etl", "2024-03-06").returncode == 0
    (worked_example / "events_sample.json").write_text(CORRECTED)
    # Another run builds 2024-03-06 after FORCE=1 of 2024-03-04 removed that partition's record and
    # before its reload: it would report without 2024-03-04's events, so it records nothing.
    overwrite.invalidate(datetime.date(2024, 3, 4))
    with pytest.raises(transform.DbtFailed, match="events of 2024-03-04 are not in staging"):
        transform.build([datetime.date(2024, 3, 6)])
    assert query("select count(*) from etl.build where run_date = '2024-03-06'") == [(0,)]
    assert run_cli("run-etl", "2024-03-06").stdout.endswith(corrected_2024_03_06)

    # Now FORCE=1 of the latest partition (u5's creation, e10), whose line moves down one, and a
    # build of an earlier date between its removal and its reload: the history took the partition
    # as removed, and its reload is still a rework, which gives e10's row its new place.
    (worked_example / "events_sample.json").write_text("\n" + CORRECTED)
    overwrite.invalidate(datetime.date(2024, 3, 6))
    transform.build([datetime.date(2024, 3, 5)])
    reload = run_cli("run-etl", "2024-03-06")
    assert reload.returncode == 0, reload.stdout[-3000:] + reload.stderr[-3000:]
    assert reload.stdout.endswith(corrected_2024_03_06)
    places = (
        "select history.line_number, delivered.line_number, history.load_id, delivered.load_id"
        " from historical.hist_user_event as history inner join staging.event as delivered"
        " on delivered.event_id = history.event_id and delivered.date = history.partition_date"
        " where history.event_id = 'e10'"
    )
    [(line, delivered_line, load, delivered_load)] = query(places)
    assert (line, load) == (delivered_line, delivered_load)


def test_a_build_that_a_reload_overtook_builds_again(database_url, worked_example, capsys, tmp_path):
    assert run_cli("backfill", "2024-03-03", "2024-03-04").returncode == 0
    (worked_example / "events_sample.json").write_text(CORRECTED)
    # The build of 2024-03-05 waits for this lock once the history has taken in the partitions;
    # meanwhile FORCE=1 of 2024-03-04 reloads that partition, and its own build waits for this one.
    holder = psycopg2.connect(database_url)
    holder.cursor().execute("lock table reporting.cohort_summary in access exclusive mode")
    partition_load = "select load_id from staging.event_partition where partition_date = '2024-03-04'"
    [(first_load,)] = query(partition_load)
    forced = []

    def force_while_the_build_waits():
        # The run is started, and waited for, in this thread: it dies with the thread that started it.
        run = None
        try:
            waiting = (
                "select count(*) from pg_locks where not granted and relation = 'reporting.cohort_summary'::regclass"
            )
            wait_for(lambda: query(waiting) == [(1,)])
            run = start_cli("run-etl", "2024-03-04", "--force", stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: query(partition_load) not in ([], [(first_load,)]))
        finally:
            holder.rollback()
            holder.close()
        forced.append(run.wait(timeout=600))

    with open(tmp_path / "forced.log", "w") as log:
        helper = threading.Thread(target=force_while_the_build_waits)
        helper.start()
        try:
            built = luigi.build([RunEtl(date=datetime.date(2024, 3, 5))], local_scheduler=True)
        finally:
            helper.join()
    assert forced == [0], (tmp_path / "forced.log").read_text()[-3000:]
    assert built
    reports = worked_example.parent / "work" / "reports"
    assert (reports / "cohort_summary_2024-03-05.csv").read_text() == CORRECTED_2024_03_05
    assert "events of 2024-03-04 were reloaded during the build: building again" in capsys.readouterr().out


def test_a_backfill_ends_with_every_data_test_on_every_row(database_url, worked_example):
    # Before any build every test met a missing table: some twenty FAILED blocks, exit 30.
    nothing = run_cli("test-warehouse")
    assert nothing.returncode == 2 and nothing.stdout == ""
    assert nothing.stderr.startswith("error: nothing to test: no build has completed in postgresql://")
    assert nothing.stderr.count("\n") == 1
    assert run_cli("run-etl", "2024-03-05").returncode == 0
    # A row gone wrong that the next build does not write: its own tests check only what it wrote.
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("insert into dimensional.fac_user select * from dimensional.fac_user limit 1")
    result = run_cli("backfill", "2024-03-06", "2024-03-06")
    assert result.returncode == 30, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAILED test-warehouse: unique_fac_user_event_id: 1 row(s) found" in result.stdout
    assert "dbt_test_warehouse.log" in result.stdout
    assert query("select count(*) from etl.build where run_date = '2024-03-06'") == [(1,)]
    assert (worked_example.parent / "work" / "reports" / "cohort_summary_2024-03-06.csv").exists()

    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(
            "delete from dimensional.fac_user where ctid in (select ctid from (select ctid, row_number() over"
            " (partition by event_id order by ctid) as copy from dimensional.fac_user) as numbered where copy > 1)"
        )
        # an event type the contract does not name: a warning, which is spelled out like a build's
        cur.execute("create temporary table odd as select * from historical.hist_user_event limit 1")
        cur.execute("update odd set event_id = 'odd-1', event_type = 'user_renamed'")
        cur.execute("insert into historical.hist_user_event select * from odd")
    checked = run_cli("test-warehouse")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "warehouse tests: " in checked.stdout and " PASS" in checked.stdout and "FAILED" not in checked.stdout
    assert "dbt WARN accepted_values_hist_user_event_event_type" in checked.stdout


# Staging rows no load would write. Without event_type, the layers after the history skip the row
# (it is no lifecycle event), so only the history's test sees it; without user_id, the reload that
# removes it from the history must not need its user.
@pytest.mark.parametrize(
    "spoiled",
    ['{"id": "e-spoiled", "user_id": "u1"}', '{"id": "e-spoiled", "event_type": "user_created"}'],
    ids=["no-event-type", "no-user-id"],
)
def test_rows_a_failed_build_wrote_are_tested_again_until_a_build_passes(database_url, worked_example, spoiled):
    assert run_cli("run-etl", "2024-03-04").returncode == 0
    assert run_cli("load", "2024-03-05").returncode == 0
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(
            """
            insert into staging.event (date, object_number, line_number, event_id, received_at, json_content, load_id)
            select loaded.partition_date, 1, 1000, 'e-spoiled', loaded.partition_date, %s, loaded.load_id
            from staging.event_partition as loaded where loaded.partition_date = '2024-03-05'
            """,
            (spoiled,),
        )
        assert cur.rowcount == 1
    failed_test = "FAILED BuildWarehouse 2024-03-05: dbt build failed (exit 1): not_null_columns_hist_user_event"
    for _ in range(2):  # the build after a failed one writes nothing new, yet must not pass
        result = run_cli("run-etl", "2024-03-05")
        assert result.returncode == 30, result.stdout[-3000:] + result.stderr[-3000:]
        assert failed_test in result.stdout
    assert query("select count(*) from etl.build where run_date = '2024-03-05'") == [(0,)]
    # The fix a user makes: the partition loaded again from its object, without that row.
    fixed = run_cli("run-etl", "2024-03-05", "--force")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    report = worked_example.parent / "work" / "reports" / "cohort_summary_2024-03-05.csv"
    assert report.read_text() == REPORT_2024_03_05


def test_a_backfill_takes_each_changed_organization_list_in_date_order_in_one_dbt(
    database_url, settings, tmp_path, monkeypatch
):
    days = [datetime.date(2024, 3, 1) + datetime.timedelta(days=offset) for offset in range(4)]
    tiers = [
        {"o1": "free", "o2": "free"},
        {"o1": "pro", "o2": "free"},  # o1 changes
        {"o1": "pro", "o2": "free"},  # nothing changes: no snapshot for this date
        {"o1": "pro", "o3": "free"},  # o2 leaves, o3 comes
    ]
    source = tmp_path / "source"
    for number, (day, listed) in enumerate(zip(days, tiers, strict=True)):
        event = {"id": f"e{number}", "event_type": "user_created", "user_id": f"u{number}", "organization_id": "o1"}
        write_lines(source / f"events/date={day}/part-0.json", [{**event, "received_at": f"{day}T09:00:00Z"}])
        orgs = [{"organization_key": key, "organization_tier": tier} for key, tier in listed.items()]
        write_lines(source / f"orgs/date={day}.json", orgs)
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", str(days[0]))
    settings("source", events_key="events/date={date}/", orgs_key="orgs/date={date}.json")

    result = run_cli("backfill", str(days[0]), str(days[-1]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Each change at the date whose list first showed it, as day-by-day runs would have recorded it.
    assert query(
        "select organization_key, organization_tier, valid_from::date, valid_to::date"
        " from dimensional.dim_organization order by 1, 3"
    ) == [
        ("o1", "free", days[0], days[1]),
        ("o1", "pro", days[1], None),
        ("o2", "free", days[0], days[3]),
        ("o3", "free", days[3], None),
    ]
    # The snapshots of days 1 and 2, and the build of the range (which took day 4's), ran in one
    # dbt process: dbt started once, not once per date whose list changed.
    invocations = {}
    for line in (tmp_path / "work" / "logs" / "dbt.log").read_text().splitlines():
        event = json.loads(line)
        node = event["data"].get("node_info", {}).get("node_name")
        pid, nodes = invocations.setdefault(event["info"]["invocation_id"], (event["info"]["pid"], set()))
        nodes.add(node)
    snapshots = [pid for pid, nodes in invocations.values() if "snap_organization" in nodes]
    builds = [pid for pid, nodes in invocations.values() if "hist_user_event" in nodes]
    assert len(snapshots) == 3 and len(builds) == 1
    assert set(snapshots) == set(builds)


def test_every_build_of_a_backfill_waits_for_its_whole_range():
    # Otherwise an idle worker builds the first dates loaded, and the rest need a second build.
    first, last = datetime.date(2024, 3, 1), datetime.date(2024, 3, 6)
    pending, builds = [Backfill(first, last)], []
    while pending:
        task = pending.pop()
        builds += [task] if isinstance(task, BuildWarehouse) else []
        pending += luigi.task.flatten(task.requires())
    assert sorted(max(dates(build)) for build in builds) == config.dates_between(first, last)
    assert {build.requires() for build in builds} == {LoadHistory(last)}


def test_every_task_survives_the_schedulers_string_form():
    # luigid and a batched run hand a task over as strings; the worker rebuilds it with from_str_params.
    pending, seen = [Backfill(datetime.date(2024, 3, 1), datetime.date(2024, 3, 3))], 0
    pending += [BuildWarehouse(date=(datetime.date(2024, 3, 1), datetime.date(2024, 3, 2)))]
    while pending:
        task = pending.pop()
        assert type(task).from_str_params(task.to_str_params()) == task
        assert type(task).from_str_params(task.to_str_params()).to_str_params() == task.to_str_params()
        pending += luigi.task.flatten(task.requires())
        seen += 1
    assert seen > 10


def test_a_report_of_decades_is_printed_in_part_and_named_whole(tmp_path, capsys):
    # one event dated 1970 makes a report of some 20,000 rows: the terminal gets its start
    path = tmp_path / "cohort_summary_2024-01-31.csv"
    rows = [f"1970-01,{k},1,1,1.0000\n" for k in range(console.MAX_PRINTED_ROWS + 5)]
    path.write_text("cohort_month,months_since_signup,cohort_size,active_users,retention_rate\n" + "".join(rows))
    console.print_report(path)
    printed = capsys.readouterr().out.splitlines(keepends=True)
    assert printed[1 : console.MAX_PRINTED_ROWS + 1] == rows[: console.MAX_PRINTED_ROWS]
    assert printed[-1] == f"… 5 more rows in {path}\n"
    path.write_text(REPORT_2024_03_05)
    console.print_report(path)
    assert capsys.readouterr().out == REPORT_2024_03_05


def test_dates_with_gaps_are_not_named_as_a_range():
    day = datetime.date(2024, 1, 2)
    assert console.span([day]) == "2024-01-02"
    assert console.span([day + datetime.timedelta(1), day]) == "2024-01-02 … 2024-01-03 (2 dates)"
    assert console.span([day, day + datetime.timedelta(2)]) == "2024-01-02 … 2024-01-04 (2 of 3 dates)"


def test_a_luigid_that_cannot_start_says_why_in_one_line(database_url, settings):
    # an address of another machine: the cause was only in luigid's log, behind our traceback
    settings("luigid", address="10.255.255.1")
    result = run_cli("luigid-start")
    assert result.returncode == 2
    assert result.stderr.startswith("error: luigid did not start: ") and result.stderr.count("\n") == 1
    assert "Cannot assign requested address" in result.stderr
