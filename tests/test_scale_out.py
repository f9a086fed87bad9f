"""Scale out on one machine: a backfill shared by several Luigi worker processes under one luigid,
each worker with its own data directory (no shared disk), one PostgreSQL, the source over the S3
protocol; one worker is killed mid-run and the others finish the job."""

import datetime
import gzip
import http.server
import json
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import psycopg2
import pytest

from tasks import config, db
from tasks.load import LoadEvents

import cohort_oracle
from conftest import free_port, query, run_cli, start_cli, wait_for, write_lines

pytestmark = pytest.mark.slow

DAYS = config.dates_between(datetime.date(2024, 1, 30), datetime.date(2024, 2, 4))


def day_events(day: datetime.date, count: int = 150) -> list:
    """Users created, some deleted the next day and created again; a few stragglers from the day before."""
    events = []
    for n in range(count):
        user = f"u{day:%m%d}-{n}"
        events.append(
            {
                "id": f"c-{user}",
                "event_type": "user_created",
                "user_id": user,
                "received_at": f"{day}T{n % 24:02d}:{n % 60:02d}:00Z",
            }
        )
        if n % 5 == 0:
            events.append(
                {
                    "id": f"d-{user}",
                    "event_type": "user_deleted",
                    "user_id": user,
                    "received_at": f"{day}T23:{n % 60:02d}:30+01:00",
                }
            )
    return events


def api(port, method, **data):
    query_string = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://localhost:{port}/api/{method}?{query_string}", timeout=10) as response:
        return json.load(response)["response"]


def worker_names(port) -> str:
    """The names luigid knows its active workers by (each holds its pid), in one string."""
    return " ".join(entry["name"] for entry in api(port, "worker_list"))


def test_workers_without_a_shared_disk_finish_a_backfill_when_one_is_killed(
    database_url, s3_bucket, settings, tmp_path, monkeypatch
):
    client, bucket = s3_bucket
    files = []
    for day in DAYS:
        key = f"events/date={day}/part-0.json.gz"
        body = gzip.compress("".join(json.dumps(e) + "\n" for e in day_events(day)).encode(), mtime=0)
        client.put_object(Bucket=bucket, Key=key, Body=body)
        (tmp_path / f"{day}.json.gz").write_bytes(body)
        files.append((day, key, tmp_path / f"{day}.json.gz"))
    client.put_object(Bucket=bucket, Key="orgs.json", Body=b'{"organization_key":"o1"}\n')
    monkeypatch.setenv("ETL_SOURCE_URL", f"s3://{bucket}")
    monkeypatch.setenv("ETL_HISTORY_START", DAYS[0].isoformat())
    port = free_port()
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    settings("etl", load_batch_size=2)
    settings("core", scheduler_host="localhost", scheduler_port=port)
    # A killed worker's tasks go back to the others after 3 s of silence (default 30 s).
    settings("scheduler", worker_disconnect_delay=3)
    assert run_cli("luigid-start").returncode == 0
    workers = []
    try:
        for name in ("one", "two"):
            env = {"ETL_DATA_DIR": str(tmp_path / f"worker-{name}")}
            workers.append(start_cli("worker", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Both assistants must be asking luigid for work before the backfill is scheduled; on a loaded
        # machine one still importing would otherwise see every task taken.
        while True:
            joined = worker_names(port)
            if all(f"pid={w.pid}" in joined for w in workers):
                break
            assert all(w.poll() is None for w in workers), "a worker exited before it joined luigid"
            time.sleep(0.05)  # poll interval of a condition on luigid's state
        driver = start_cli(
            "backfill",
            str(DAYS[0]),
            str(DAYS[-1]),
            env={"ETL_DATA_DIR": str(tmp_path / "driver")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Kill whichever worker runs a task first (a condition on luigid's state, not a delay).
        victim = None
        while driver.poll() is None and victim is None:
            running_tasks = api(port, "task_list", status="RUNNING").values()
            running = " ".join(task.get("worker_running") or "" for task in running_tasks)
            victim = next((w for w in workers if f"pid={w.pid}" in running), None)
        if victim is not None:
            victim.send_signal(signal.SIGKILL)
        output, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, output[-3000:]
        assert victim is not None, "no worker ran a task: nothing was killed mid-run"
        # The other worker kept serving luigid to the end. Whether it also ran tasks is luigid's
        # choice between it and the driver, which takes tasks too, so it is not asserted.
        (survivor,) = [w for w in workers if w is not victim]
        assert survivor.poll() is None
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        run_cli("luigid-stop")

    events = list(cohort_oracle.daily_events(files))
    for day in DAYS:
        report = tmp_path / "driver" / "reports" / f"cohort_summary_{day}.csv"
        assert report.read_text() == cohort_oracle.report(events, day, config.history_start()), day
    # Nothing loaded twice: one load per partition, and every partition's rows are its day's events.
    assert query("select date, count(distinct load_id), count(*) from staging.event group by 1 order by 1") == [
        (day, 1, len(day_events(day))) for day in DAYS
    ]
    # No download was landed on any disk: an S3 source is read in place by whichever worker loads it.
    assert not any((tmp_path / place / "raw").exists() for place in ("driver", "worker-one", "worker-two"))


@pytest.mark.parametrize("assistants, load_batch_size", [(0, 7), (2, 1)])
def test_a_run_on_luigid_ends_with_missing_data_when_a_daily_prefix_has_not_arrived(
    database_url, settings, tmp_path, monkeypatch, assistants, load_batch_size
):
    # On luigid a run keeps alive while other workers may run its tasks; a prefix nobody will write
    # in this run must not keep it waiting for ever. With `make worker`s taking its tasks it ended
    # "not run" (25) instead: Luigi ranks that code above missing data's.
    source = tmp_path / "source"
    first, missing, *later = DAYS
    for day in (first, *later):
        write_lines(source / f"events/date={day}/part-0.json", day_events(day, count=5))
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", first.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port)
    settings("etl", load_batch_size=load_batch_size)
    assert run_cli("luigid-start").returncode == 0
    workers = []
    try:
        for n in range(assistants):
            env = {"ETL_DATA_DIR": str(tmp_path / f"worker-{n}")}
            workers.append(start_cli("worker", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: all(f"pid={w.pid}" in worker_names(port) for w in workers))
        result = run_cli("run-etl", str(DAYS[-1]), timeout=300)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        run_cli("luigid-stop")
    assert result.returncode == 20, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"date={missing}" in result.stdout
    # What could run did: the days that arrived are loaded.
    assert query("select partition_date from staging.event_partition order by 1") == [(d,) for d in (first, *later)]


def test_a_run_on_luigid_after_one_that_waited_for_a_later_date_finishes(database_url, settings, tmp_path, monkeypatch):
    # luigid keeps the parameters a task id first came with: the builds of the narrower range
    # shared their ids with the first run's, were handed out waiting for its missing last date,
    # and failed ("Unfulfilled dependency at run time").
    source = tmp_path / "source"
    present = DAYS[:3]
    files = [(d, "part-0.json", write_lines(source / f"events/date={d}/part-0.json", day_events(d))) for d in present]
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", DAYS[0].isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    settings("core", scheduler_host="localhost", scheduler_port=free_port())
    assert run_cli("luigid-start").returncode == 0
    try:
        waited = run_cli("backfill", str(DAYS[0]), str(DAYS[3]), timeout=300)
        narrower = run_cli("backfill", str(DAYS[0]), str(DAYS[2]), timeout=300)
    finally:
        run_cli("luigid-stop")
    assert waited.returncode == 20, waited.stdout[-2000:] + waited.stderr[-2000:]
    assert narrower.returncode == 0, narrower.stdout[-3000:] + narrower.stderr[-2000:]
    events = list(cohort_oracle.daily_events(files))
    for day in present:
        report = tmp_path / "work" / "reports" / f"cohort_summary_{day}.csv"
        assert report.read_text() == cohort_oracle.report(events, day, DAYS[0]), day


def test_a_run_on_luigid_names_the_task_luigid_disabled(database_url, settings, tmp_path, monkeypatch):
    # luigid disables a task that failed [scheduler] retry_count times; a run then ended with exit
    # 25 and no word of why, or with 20 when a daily prefix was missing as well.
    source = tmp_path / "source"
    cut, missing, day = DAYS[:3]
    (source / f"events/date={cut}").mkdir(parents=True)
    (source / f"events/date={cut}/part-0.json.gz").write_bytes(b"")  # a cut object: its load fails
    write_lines(source / f"events/date={day}/part-0.json", day_events(day, count=5))
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", cut.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    settings("core", scheduler_host="localhost", scheduler_port=free_port())
    settings("scheduler", retry_count=1, disable_persist=3600)
    assert run_cli("luigid-start").returncode == 0
    try:
        failed = run_cli("run-etl", str(cut))
        refused = run_cli("run-etl", str(cut))
        refused_too = run_cli("run-etl", str(day), timeout=300)
    finally:
        run_cli("luigid-stop")
    assert failed.returncode == 30, failed.stdout[-2000:] + failed.stderr[-2000:]
    for result in (refused, refused_too):
        assert result.returncode == 25, result.stdout[-2000:] + result.stderr[-2000:]
        assert f"luigid disabled LoadEvents(date={cut}) after 1 failure; " in result.stdout
    assert f"waiting: EventsArrived({missing}) has not arrived" in refused_too.stdout


def test_a_run_on_luigid_carries_on_after_luigid_restarts(database_url, settings, tmp_path, monkeypatch):
    # A restarted luigid knows no tasks (make luigid removes its saved state): the run's worker,
    # once its task was done, found nothing more to do and the run ended "not run" (25).
    source = tmp_path / "source"
    files = [(d, "part-0.json", write_lines(source / f"events/date={d}/part-0.json", day_events(d))) for d in DAYS[:2]]
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", DAYS[0].isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port, rpc_retry_wait=1)
    assert run_cli("luigid-start").returncode == 0
    holder = psycopg2.connect(database_url)
    run = None
    try:
        with holder.cursor() as cur:  # the run's load waits for this partition's lock
            db.lock_partition(cur, "staging.event", DAYS[0])
        run = start_cli("run-etl", str(DAYS[1]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        waiting = "select count(*) from pg_locks where locktype = 'advisory' and not granted and database ="
        waiting += " (select oid from pg_database where datname = current_database())"
        wait_for(lambda: query(waiting) == [(1,)])
        assert run_cli("luigid-stop").returncode == 0
        assert run_cli("luigid-start").returncode == 0
        holder.rollback()
        output, _ = run.communicate(timeout=300)
    finally:
        holder.close()
        if run is not None and run.poll() is None:
            run.kill()
        run_cli("luigid-stop")
    assert run.returncode == 0, output[-3000:]
    assert "scheduling them again" in output
    report = tmp_path / "work" / "reports" / f"cohort_summary_{DAYS[1]}.csv"
    assert report.read_text() == cohort_oracle.report(list(cohort_oracle.daily_events(files)), DAYS[1], DAYS[0])


def test_a_run_after_luigid_restarts_finishes_what_a_lost_worker_ran(database_url, settings, tmp_path, monkeypatch):
    # luigid kept its tasks across a restart (state.pickle). A task a worker was running when
    # luigid stopped stayed RUNNING by that worker, so the next run's word that the task was done
    # went unheard; once the lost worker timed out the task went back to pending with no worker
    # to run it, and the run waited for it for ever.
    source = tmp_path / "source"
    first, day = DAYS[0], DAYS[1]
    files = [
        (d, "part-0.json", write_lines(source / f"events/date={d}/part-0.json", day_events(d))) for d in (first, day)
    ]
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", first.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    assert run_cli("load", str(first)).returncode == 0  # on the local scheduler
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port)
    assert run_cli("luigid-start").returncode == 0
    try:
        # A worker lost with luigid while it loaded `first`: it committed, and never said so. luigid
        # takes it for gone after [scheduler] worker_disconnect_delay (30 s), long after the run began.
        api(
            port,
            "add_task",
            worker="lost-worker",
            task_id=LoadEvents(first).task_id,
            status="RUNNING",
            family="LoadEvents",
            params={"date": str(first)},
            runnable=True,
        )
        assert run_cli("luigid-stop").returncode == 0
        assert run_cli("luigid-start").returncode == 0
        result = run_cli("run-etl", str(day), timeout=180)
    finally:
        run_cli("luigid-stop")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = tmp_path / "work" / "reports" / f"cohort_summary_{day}.csv"
    assert report.read_text() == cohort_oracle.report(list(cohort_oracle.daily_events(files)), day, first)


def lose_luigid(settings, attempts: int) -> tuple:
    """A `make worker` on a luigid that then stops, Luigi's client trying `attempts` times 1 s
    apart: (luigid's port, the worker's exit code, its output, its errors)."""
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port, rpc_retry_attempts=attempts, rpc_retry_wait=1)
    assert run_cli("luigid-start").returncode == 0
    worker = start_cli("worker", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"pid={worker.pid}" in worker_names(port) or worker.poll() is not None)
        run_cli("luigid-stop")
        output, errors = worker.communicate(timeout=120)
    finally:
        run_cli("luigid-stop")
        if worker.poll() is None:
            worker.kill()
    return port, worker.returncode, output, errors


def test_a_worker_that_loses_luigid_says_so_in_one_line(database_url, settings):
    port, code, output, errors = lose_luigid(settings, attempts=1)
    # It was Luigi's traceback and exit 1: a scheduler that retries on scheduling_error now can.
    assert code == 35, output[-2000:] + errors[-2000:]
    # refused, or reset when luigid stopped during a request
    assert f"error: lost luigid at http://localhost:{port}: " in output and "Connection" in output
    assert "Traceback" not in errors and "UnconsumedParameterWarning" not in errors


def test_a_worker_waiting_out_luigis_retries_says_so_once(database_url, settings):
    # Luigi's client tries each request rpc_retry_attempts times (3, 30 s apart by default) before
    # the worker ends with "lost luigid": minutes in which the terminal said nothing.
    port, code, output, errors = lose_luigid(settings, attempts=3)
    assert code == 35, output[-2000:] + errors[-2000:]
    lines = output.splitlines()
    (waiting,) = [n for n, line in enumerate(lines) if line.startswith(f"luigid at http://localhost:{port} did not")]
    (lost,) = [n for n, line in enumerate(lines) if line.startswith(f"error: lost luigid at http://localhost:{port}")]
    assert waiting < lost
    assert "tries each request 3 times, 1 s apart ([core] rpc_retry_attempts, rpc_retry_wait)" in lines[waiting]
    assert "Traceback" not in errors


class _NotJson(http.server.BaseHTTPRequestHandler):
    """A web server that answers every request 200, with a page that is not JSON."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>hello</html>")

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "handler, cause",
    [
        (http.server.SimpleHTTPRequestHandler, "what answers there is not luigid (501 Server Error"),
        (_NotJson, "what answers there is not luigid (its reply is not JSON"),
    ],
    ids=["refuses-posts", "answers-html"],
)
def test_a_run_on_a_port_that_is_not_luigid_says_so_in_one_line(database_url, settings, handler, cause):
    # Something else answers on scheduler_port: it was exit 40, "an unexpected error in Luigi".
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    settings("core", scheduler_host="localhost", scheduler_port=other.server_port, rpc_retry_attempts=1)
    try:
        result = run_cli("run-etl", "2024-01-03")
    finally:
        other.shutdown()
        other.server_close()
    assert result.returncode == 35, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: lost luigid at http://localhost:{other.server_port}: {cause}")
    assert "FAILED" not in result.stdout and "Traceback" not in result.stderr


def test_make_clean_refuses_while_a_run_or_a_worker_runs(database_url, settings, tmp_path):
    # `make clean` while a run ran dropped its schemas under it; the run wrote them again after.
    # The worker has a data dir of its own, as on another machine (the data dir's own lock:
    # test_reliability.py, test_make_clean_and_a_run_take_turns_on_the_data_dir).
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port)
    assert run_cli("luigid-start").returncode == 0
    env = {"ETL_DATA_DIR": str(tmp_path / "elsewhere")}
    worker = start_cli("worker", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f"pid={worker.pid}" in worker_names(port))  # it has recorded its run
        refused = run_cli("clean")
        worker.kill()
        worker.wait()
        # its session ends once the server reads the closed socket
        sessions = "select count(*) from pg_stat_activity where datname = current_database() and application_name = %s"
        wait_for(lambda: query(sessions, ("etl run 1",)) == [(0,)])
        cleaned = run_cli("clean")
    finally:
        if worker.poll() is None:
            worker.kill()
        run_cli("luigid-stop")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: still running on this database: run 1 (make worker, on ")
    assert f"pid {worker.pid})" in refused.stderr and refused.stdout == ""
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert "dropped schema etl" in cleaned.stdout


def test_ctrl_c_stops_a_worker_and_a_run_waiting_for_a_clean_without_a_traceback(database_url, settings):
    # Ctrl-C is how a `make worker` is stopped; it ended in Luigi's traceback, recorded as failed.
    port = free_port()
    settings("core", scheduler_host="localhost", scheduler_port=port)
    assert run_cli("luigid-start").returncode == 0
    worker = start_cli("worker", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"pid={worker.pid}" in worker_names(port) or worker.poll() is not None)
        worker.send_signal(signal.SIGINT)
        output, errors = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        run_cli("luigid-stop")
    assert worker.returncode == 130, output[-2000:] + errors[-2000:]
    assert "interrupted: this worker takes no more tasks" in output and "Traceback" not in errors
    assert query("select status, exit_code from etl.run") == [("interrupted", 130)]

    # A run that waits for a `make clean` (here, its lock held by hand) is stopped the same way.
    cleaning = psycopg2.connect(database_url)
    run = None
    try:
        cleaning.cursor().execute("select pg_advisory_xact_lock(hashtext('etl.run'))")
        run = start_cli("run-etl", "2024-01-03", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stdout.readline() == "waiting for a make clean of this database to finish\n"
        run.send_signal(signal.SIGINT)
        output, errors = run.communicate(timeout=120)
    finally:
        cleaning.close()
        if run is not None and run.poll() is None:
            run.kill()
    assert run.returncode == 130, output + errors
    assert errors == "interrupted\n"
