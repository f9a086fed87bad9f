"""dbt's own checks of the SQL: unit tests of the models (given rows -> expected rows), a generic data
test of ours catching what it is written for, and dbt by hand.

The unit tests (`unit_tests:` in the layers' _models.yml) need the models' relations to exist for
their column types: a build of a fresh database, with its staging tables empty, makes them.
"""

import datetime
import json
import os
import signal
import subprocess

import pytest
import yaml

from tasks import config, db, staging, transform

from conftest import query, run_cli, start_cli, wait_for
from test_report import REPORT_2024_03_05, WORKED_EXAMPLE, one_file_source, run_etl

UNIT_TESTS = {
    "hist_user_event_first_delivery_wins",
    "dim_user_versions_partial_updates_deletion_and_recreation",
    "user_active_interval_lifecycle_and_ties",
    "active_interval_count_groups_and_counts",
    "cohort_summary_contract_worked_example",
    "cohort_summary_ties_epochs_and_boundaries",
}


def dbt(*arguments, dbt_vars=None):
    conn = db.connect()
    try:
        env = transform.dbt_environment(conn)
    finally:
        conn.close()
    command = transform.dbt_command(list(arguments), dbt_vars)
    return subprocess.run(command, cwd=config.DBT_PROJECT, env=env, capture_output=True, text=True)


def run_results() -> list:
    """The results of the latest dbt invocation, from its run_results.json."""
    return json.loads((transform.target_path() / "run_results.json").read_text())["results"]


def test_every_unit_test_is_listed_here():
    found = set()
    for path in (config.DBT_PROJECT / "models").glob("*/_models.yml"):
        found |= {test["name"] for test in yaml.safe_load(path.read_text()).get("unit_tests", [])}
    assert found == UNIT_TESTS


@pytest.mark.slow
def test_dbt_unit_tests_pass(database_url):
    with db.transaction() as conn:
        staging.ensure_tables(conn)
    empty = dbt("run", "--select", "+cohort_summary", "+dim_user", dbt_vars={"run_dates": ["2024-01-01"]})
    assert empty.returncode == 0, empty.stdout[-3000:]
    result = dbt("test", "--select", "test_type:unit")
    assert result.returncode == 0, result.stdout[-5000:]
    results = run_results()
    assert {r["unique_id"].split(".")[-1]: r["status"] for r in results} == {name: "pass" for name in UNIT_TESTS}


@pytest.mark.slow
def test_a_report_date_given_twice_by_hand_counts_once(database_url, tmp_path, monkeypatch):
    one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)
    run_etl(datetime.date(2024, 3, 5))
    report = (
        "select cohort_month, months_since_signup, cohort_size, active_users, retention_rate"
        " from reporting.cohort_summary where as_of_date = '2024-03-05' order by 1, 2"
    )
    before = query(report)
    twice = {"run_dates": ["2024-03-05", "2024-03-05"], "snapshot_date": "2024-03-05"}
    result = dbt("run", "--select", "cohort_summary", dbt_vars=twice)
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(before) == 5 and query(report) == before


def test_ctrl_c_ends_a_read_only_dbt_by_hand_with_130_and_no_traceback_of_ours(database_url):
    # e.g. `make dbt ARGS="docs serve"`, which runs until Ctrl-C; a query stands in for it here.
    run = start_cli(
        "dbt",
        "show",
        "--inline",
        "select pg_sleep(60) as slept",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        sleeping = "select 1 from pg_stat_activity where query like %s and pid != pg_backend_pid()"
        wait_for(lambda: run.poll() is not None or query(sleeping, ("%pg_sleep(60) as slept%",)), seconds=120)
        assert run.poll() is None, run.communicate()
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C reaches the terminal's process group
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 128 + signal.SIGINT, out + err
    assert "tasks/transform.py" not in out + err


def test_dbt_by_hand_reaches_the_pipeline_database_under_its_own_name(database_url):
    # make dbt ARGS="..." runs dbt against the pipeline's database; its sessions are not a build's,
    # so a build taking the dbt lock (which ends a killed build's sessions) leaves them alone.
    name = f"{transform.DBT_APPLICATION}-by-hand"
    check = f"select current_setting('application_name') = '{name}' as named_by_hand"
    result = run_cli("dbt", "show", "--inline", check, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| named_by_hand |" in result.stdout
    assert " True |" in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal here: no colour codes


@pytest.mark.parametrize(
    "arguments, environment, refused",
    [
        (["build", "--empty"], {}, "--empty"),
        (["run", "--select", "dim_user", "--sample=3 days"], {}, "--sample=3 days"),
        (["snapshot"], {"DBT_EMPTY": "1"}, "DBT_EMPTY=1"),
        (["run", "--select", "dim_organization"], {"DBT_ENGINE_EMPTY": "1"}, "DBT_ENGINE_EMPTY=1"),  # dbt 1.11's name
        (["--debug", "build", "--empty"], {}, "--empty"),  # dbt's options may come before its command
    ],
)
def test_dbt_by_hand_refuses_to_build_from_empty_or_sampled_input(arguments, environment, refused):
    # `dbt build --empty` on a built warehouse emptied dim_organization and cleared the history's
    # record of its partitions: refused before dbt starts, or any connection (this server is none).
    nowhere = {"ETL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere", **environment}
    result = run_cli("dbt", *arguments, env=nowhere)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"error: refused {refused}: dbt would build this warehouse from no rows or only a sample" in result.stderr


def test_which_dbt_commands_by_hand_change_the_warehouse():
    assert transform.changes_warehouse(["test", "--log-level", "debug"])
    assert transform.changes_warehouse(["run-operation", "some_macro"])
    assert not transform.changes_warehouse(["compile", "--empty"])  # so --empty is allowed there
    assert not transform.changes_warehouse(["run", "--help"])
    assert not transform.changes_warehouse([])
    assert transform.changes_warehouse(["--log-level", "debug", "ls"])  # the safe side


@pytest.mark.slow
def test_dbt_commands_in_one_process_stop_at_the_first_that_fails(database_url, tmp_path):
    conn = db.connect()
    try:
        # settings far beyond what one command-line argument may hold (128 KiB): a long backfill's
        many_dates = {"run_dates": [str(datetime.date(2000, 1, 1) + datetime.timedelta(days=n)) for n in range(20_000)]}
        steps = [(["ls", "--select", "dim_user"], many_dates), (["run-operation", "no_such_macro"], {}), (["ls"], {})]
        runs = transform.invoke(conn, steps, tmp_path / "series.log")
    finally:
        conn.close()
    assert [run.returncode != 0 for run in runs] == [False, True]
    log = (tmp_path / "series.log").read_text()
    assert "product_events.dimensional.dim_user" in log and "no_such_macro" in log
    assert "product_events.dimensional.fac_user" not in log  # the last never ran


def test_builds_ignore_dbt_variables_for_partial_input(database_url, monkeypatch):
    for name in transform.PARTIAL_INPUT_VARIABLES:
        monkeypatch.setenv(name, "1")
    conn = db.connect()
    try:
        env = transform.dbt_environment(conn)
    finally:
        conn.close()
    assert {"DBT_EMPTY", "DBT_SAMPLE", "DBT_ENGINE_EMPTY", "DBT_ENGINE_SAMPLE"}.isdisjoint(env)


@pytest.mark.slow
def test_dbt_by_hand_waits_for_a_build_when_it_changes_the_warehouse(database_url):
    # A hand `dbt test` (or run, build...) beside a pipeline's build would read half-built state or
    # collide with its relations: it takes the build lock. A command that changes nothing does not.
    with db.transaction() as conn:
        staging.ensure_tables(conn)
    by_hand = None
    try:
        with transform.dbt_lock():
            listed = run_cli("dbt", "ls", "--select", "dim_user", timeout=300)
            assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
            assert "product_events.dimensional.dim_user" in listed.stdout
            by_hand = start_cli(
                "dbt", "test", "--select", "source:staging", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            # Its first words: it found the lock held, and waits for it.
            first = by_hand.stdout.readline()
            assert "waiting for the dbt running on this warehouse" in first, first
            assert by_hand.poll() is None
        output, _ = by_hand.communicate(timeout=300)  # the lock is free: it goes on
    finally:
        if by_hand and by_hand.poll() is None:
            by_hand.kill()
    assert by_hand.returncode == 0, output[-3000:]
    assert "Running with dbt" in output
    # Its results are its own: a build reads its results from target_path(), never these.
    results = json.loads((transform.target_path().with_name("target-by-hand") / "run_results.json").read_text())
    assert {r["status"] for r in results["results"]} == {"pass"}
    assert not (transform.target_path() / "run_results.json").exists()


def build_worked_example_with_one_row_spoiled(tmp_path, monkeypatch, update: str) -> None:
    """The warehouse of the contract's worked example, then `update`, which must change one row."""
    one_file_source(tmp_path, monkeypatch, WORKED_EXAMPLE)
    assert run_etl(datetime.date(2024, 3, 5)) == REPORT_2024_03_05
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(update)
        assert cur.rowcount == 1


@pytest.mark.slow
def test_relationships_by_user_fails_a_key_of_another_users_version(database_url, tmp_path, monkeypatch):
    # dbt's relationships test passes a fact whose user_key names another user's version; this one
    # must not, in either of its forms: one join, or a lookup per row when the rows to check are
    # few next to dim_user (a daily build's).
    build_worked_example_with_one_row_spoiled(
        tmp_path,
        monkeypatch,
        """
        update dimensional.fac_user set user_id = user_id || '-other', changed_at = '2100-01-01 00:00+00'
        where event_id = (select min(event_id) from dimensional.fac_user where user_key is not null)
        """,
    )

    def check(settings, failures, looks_up):
        name = "relationships_by_user_fac_user_user_key__user_key__ref_dim_user_"
        result = dbt("test", "--select", name, dbt_vars=settings)
        assert result.returncode == (1 if failures else 0), result.stdout[-3000:]
        results = run_results()
        assert [(r["failures"], "as materialized" in r["compiled_code"]) for r in results] == [(failures, looks_up)]

    changed_since = {"test_scope": "changed", "build_stamp": "2100-01-01 00:00+00"}
    check({"test_scope": "all"}, 1, looks_up=False)
    check(changed_since, 1, looks_up=False)  # one row to check, but dim_user is small
    with db.transaction() as conn, conn.cursor() as cur:
        for _ in range(5):  # copies of its versions make dim_user 32 times larger than it was
            cur.execute("insert into dimensional.dim_user select * from dimensional.dim_user")
        cur.execute("analyze dimensional.dim_user")
    check(changed_since, 1, looks_up=True)
    # Rows whose parent the build wrote too are joined to those parent rows, not looked up; the
    # other user's version is among them now, and must not pass the row either, nor must a fact
    # of a user with versions there that names none of them.
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute("update dimensional.dim_user set changed_at = '2100-01-01 00:00+00'")
        cur.execute(
            """
            update dimensional.fac_user set user_key = 'no-such-version', changed_at = '2100-01-01 00:00+00'
            where event_id = (select max(event_id) from dimensional.fac_user where user_key is not null)
            """
        )
    check(changed_since, 2, looks_up=True)
    check({**changed_since, "build_stamp": "2100-01-02 00:00+00"}, 0, looks_up=True)  # nothing changed since


@pytest.mark.slow
def test_changed_contents_scope_checks_the_versions_whose_contents_a_build_wrote(database_url, tmp_path, monkeypatch):
    # A daily build writes a closed version again with its contents as they were: the tests of those
    # contents (`__changed_contents__`) check the versions whose content_changed_at is the build's.
    build_worked_example_with_one_row_spoiled(
        tmp_path,
        monkeypatch,
        """
        update dimensional.dim_user
        set opened_by_event_id = 'no-such-event', changed_at = '2100-01-02 00:00+00',
            content_changed_at = '2100-01-01 00:00+00'
        where user_key = (select min(user_key) from dimensional.dim_user)
        """,
    )

    def failures(build_stamp):
        settings = {"test_scope": "changed", "build_stamp": build_stamp}
        name = "relationships_by_user_dim_user_opened_by_event_id__event_id__ref_hist_user_event_"
        result = dbt("test", "--select", name, dbt_vars=settings)
        results = run_results()
        assert len(results) == 1, result.stdout[-3000:]
        return results[0]["failures"]

    assert failures("2100-01-01 00:00+00") == 1  # its contents were written by that build
    assert failures("2100-01-02 00:00+00") == 0  # that build only wrote the version again
