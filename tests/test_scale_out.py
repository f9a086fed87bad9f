"""Scale out on one machine: a backfill shared by several Luigi worker processes under one luigid,
each worker with its own data directory (no shared disk), one PostgreSQL, the source over the S3
protocol; one worker is killed mid-run and the others finish the job."""

import datetime
import gzip
import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tasks import config

import cohort_oracle
from conftest import free_port, query, run_cli, start_cli, write_lines

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


def test_a_run_on_luigid_ends_with_missing_data_when_a_daily_prefix_has_not_arrived(
    database_url, settings, tmp_path, monkeypatch
):
    # On luigid a run keeps alive while other workers may run its tasks; a prefix nobody will write
    # in this run must not keep it waiting for ever.
    source = tmp_path / "source"
    first, missing = DAYS[0], DAYS[1]
    write_lines(source / f"events/date={first}/part-0.json", day_events(first, count=5))
    write_lines(source / "orgs.json", [{"organization_key": "o1"}])
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    monkeypatch.setenv("ETL_HISTORY_START", first.isoformat())
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")
    settings("core", scheduler_host="localhost", scheduler_port=free_port())
    assert run_cli("luigid-start").returncode == 0
    try:
        result = run_cli("run-etl", str(missing), timeout=300)
    finally:
        run_cli("luigid-stop")
    assert result.returncode == 20, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"date={missing}" in result.stdout
    # What could run did: the day that arrived is loaded.
    assert query("select partition_date from staging.event_partition") == [(first,)]
