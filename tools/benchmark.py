"""The benchmark (`make bench`): every scale target of the pipeline measured in one run, as a time
against its target or as a ratio of two measurements taken side by side.

Reads its flags and, when set, ETL_BENCH_DATABASE_URL (an admin URL of a PostgreSQL server where it
may create and drop scratch databases; default: an embedded server of its own). Writes generated
data sets, data dirs and databases under one temporary folder, all removed at the end; prints the
table and writes it to docs/performance.md (or --out) with the commands to reproduce it.

    python -m tools.benchmark [--scale 1.0] [--only NAME ...] [--out docs/performance.md]

--scale multiplies every data set's size (0.1 for a quick look; the targets are for 1.0).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
START = datetime.date(2024, 1, 1)


@dataclass
class Row:
    """One line of the table: what was measured, how it came out, and the target."""

    name: str
    work: str
    measured: str
    target: str
    ok: bool | None  # None: measured for the record, no target to pass or fail
    details: dict = field(default_factory=dict)


class Bench:
    """Scratch databases on one server, data sets and data dirs under one folder."""

    def __init__(self, scale: float, folder: Path):
        self.scale = scale
        self.folder = folder
        self.admin = os.environ.get("ETL_BENCH_DATABASE_URL")
        self.pgdata = None
        if not self.admin:
            sys.path.insert(0, str(ROOT))
            from tasks import server

            self.pgdata = folder / "pgdata"
            self.admin = server.start_embedded(self.pgdata)
        self.databases = []

    def size(self, number: int) -> int:
        return max(1, round(number * self.scale))

    def database(self, name: str) -> str:
        """A new empty database; its connection string."""
        name = f"bench_{name}_{len(self.databases)}"
        self._admin(f'drop database if exists "{name}" with (force)', f'create database "{name}"')
        self.databases.append(name)
        return psycopg2.extensions.make_dsn(self.admin, dbname=name)

    def _admin(self, *statements) -> None:
        conn = psycopg2.connect(self.admin)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def generate(self, name: str, days: int, events_per_day: int, layout: str) -> Path:
        """A generated source (tools.generate bench) in its own folder; reused when asked twice."""
        out = self.folder / "sources" / f"{name}-{days}x{events_per_day}-{layout}"
        if not out.exists():
            end = START + datetime.timedelta(days=days - 1)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tools.generate",
                    "bench",
                    "--out",
                    str(out),
                    "--start",
                    str(START),
                    "--end",
                    str(end),
                    "--events-per-day",
                    str(events_per_day),
                    "--layout",
                    layout,
                ],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return out

    def environment(self, source: Path, layout: str, dsn: str, data_dir: Path, orgs_key: str = "orgs.json") -> dict:
        config = self.folder / f"{data_dir.name}.cfg"
        events_key = "events/date={date}/" if layout == "daily" else "events.json"
        config.write_text(
            f"[source]\nevents_key = {events_key}\norgs_key = {orgs_key}\n[core]\nscheduler_port = 1\n"
        )  # no luigid: the local scheduler, every time
        return {
            **os.environ,
            "ETL_SOURCE_URL": str(source),
            "ETL_DATABASE_URL": dsn,
            "ETL_DATA_DIR": str(data_dir),
            "ETL_HISTORY_START": str(START),
            "LUIGI_CONFIG_PATH": str(config),
        }

    def cli(self, env: dict, *arguments) -> float:
        """Run `python -m tasks ARGUMENTS`; its wall seconds. Fails loudly when the command fails."""
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "tasks", *arguments], cwd=ROOT, env=env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(
                f"python -m tasks {' '.join(arguments)} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return elapsed

    def close(self) -> None:
        for name in self.databases:
            self._admin(f'drop database if exists "{name}" with (force)')
        if self.pgdata:
            from tasks import server

            server.stop_embedded(self.pgdata)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def end_date(days: int) -> str:
    return str(START + datetime.timedelta(days=days - 1))


# --- the measurements, one per row of the table ---------------------------------------------


def one_file_history(bench: Bench) -> list:
    days, per_day = 540, bench.size(170)
    source = bench.generate("history", days, per_day, "one-file")
    env = bench.environment(source, "one-file", bench.database("history"), bench.folder / "history")
    seconds = bench.cli(env, "run-etl", end_date(days))
    return [
        Row(
            "one_file_history",
            f"first run-etl, 18 months one-file ({days * per_day:,} events, {folder_bytes(source) / 1e6:.0f} MB)",
            f"{seconds:.1f} s",
            "≤ 30 s",
            seconds <= 30,
        )
    ]


def one_file_month(bench: Bench) -> list:
    days, per_day = 30, bench.size(50_000)
    source = bench.generate("month", days, per_day, "one-file")
    data_dir = bench.folder / "month"
    env = bench.environment(source, "one-file", bench.database("month"), data_dir)
    seconds = bench.cli(env, "run-etl", end_date(days))
    raw = folder_bytes(data_dir / "raw") / folder_bytes(source)
    work = f"first run-etl, {days} days x {per_day:,} events one-file ({folder_bytes(source) / 1e6:.0f} MB)"
    return [
        Row("one_file_month", work, f"{seconds:.1f} s", "≤ 120 s", seconds <= 120),
        Row("one_file_month_raw", "raw/ after it / the source", f"{raw:.2f}x", "≤ 1.1x", raw <= 1.1),
    ]


def backfill(bench: Bench) -> list:
    days, per_day = 14, bench.size(50_000)
    source = bench.generate("backfill", days, per_day, "daily")
    times = {}
    for workers in (1, 2):
        name = f"backfill{workers}"
        env = bench.environment(source, "daily", bench.database(name), bench.folder / name)
        times[workers] = bench.cli(env, "backfill", str(START), end_date(days), "--workers", str(workers))
    # The same events with an organization list per day, each day's another: a snapshot per date.
    changing = daily_org_lists(source, bench.folder / "sources" / "backfill-changing-orgs", days)
    name = "backfill_orgs"
    env = bench.environment(changing, "daily", bench.database(name), bench.folder / name, "orgs/date={date}.json")
    times["changing_orgs"] = bench.cli(env, "backfill", str(START), end_date(days))
    ratio = times[2] / times[1]
    work = f"backfill {days} days x {per_day:,} events, daily layout"
    return [
        Row("backfill", work + ", WORKERS=1", f"{times[1]:.1f} s", "≤ 60 s", times[1] <= 60),
        Row(
            "backfill_workers",
            "the same with WORKERS=2 / WORKERS=1",
            f"{ratio:.2f}x",
            "≤ 0.7x",
            ratio <= 0.7,
            {"seconds": times},
        ),
        Row(
            "backfill_changing_orgs",
            "the same (WORKERS=1) with an organization list that changes every day / one list",
            f"{times['changing_orgs'] / times[1]:.2f}x ({times['changing_orgs']:.1f} s / {times[1]:.1f} s)",
            "(no target)",
            None,
        ),
    ]


def daily_org_lists(source: Path, out: Path, days: int) -> Path:
    """SOURCE's events, and its organizations as one list per day (orgs/date=D.json), each day's
    with one more organization renamed."""
    if not out.exists():
        out.mkdir(parents=True)
        (out / "events").symlink_to(source / "events")
        (out / "orgs").mkdir()
        orgs = [json.loads(line) for line in (source / "orgs.json").read_text().splitlines()]
        for offset in range(days):
            day = START + datetime.timedelta(days=offset)
            orgs[offset % len(orgs)]["organization_name"] += f" (renamed on {day})"
            (out / "orgs" / f"date={day}.json").write_text("".join(json.dumps(org) + "\n" for org in orgs))
    return out


LOAD_SCRIPT = """
import datetime, json, sys, time
import luigi
from tasks import staging
from tasks.extract import DownloadEvents
from tasks.load import load_partitions
day = datetime.date.fromisoformat(sys.argv[1])
assert luigi.build([DownloadEvents(day)], local_scheduler=True, log_level="WARNING")
started = time.perf_counter()
load_partitions(staging.EVENTS, [day], route_by_day=False)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def loader(bench: Bench) -> list:
    """Our staging load of one day against bare COPY, luigi's CopyToTable and dlt, side by side."""
    from tools import bench_baselines

    per_day = bench.size(1_000_000)
    source = bench.generate("loader", 1, per_day, "daily")
    day_folder = source / "events" / f"date={START}"
    whole = bench.folder / "loader-day.json"
    with open(whole, "wb") as out:
        for part in sorted(day_folder.iterdir()):
            out.write(part.read_bytes())
    ours, floor, luigi_copy = [], [], []
    for attempt in range(3):
        env = bench.environment(source, "daily", bench.database("loader"), bench.folder / f"loader{attempt}")
        result = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(START)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        ours.append(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
        dsn = env["ETL_DATABASE_URL"]
        floor.append(bench_baselines.bare_copy_seconds(dsn, whole, START))
        luigi_copy.append(bench_baselines.copy_to_table_seconds(dsn, whole, START))
        bench_baselines.drop_baselines(dsn)
    dlt = bench_baselines.dlt_seconds(bench.database("dlt"), whole, START, ROOT / ".bench" / "dlt-venv")
    ours_s, floor_s, luigi_s = (statistics.median(values) for values in (ours, floor, luigi_copy))
    rows = [
        Row(
            "loader_vs_copy",
            f"staging load of one {per_day:,}-event day / bare COPY (date, jsonb)",
            f"{ours_s / floor_s:.2f}x ({ours_s:.1f} s / {floor_s:.1f} s)",
            "≤ 1.5x",
            ours_s / floor_s <= 1.5,
        ),
        Row(
            "loader_vs_copy_to_table",
            "luigi's CopyToTable / our loader, same file",
            f"{luigi_s / ours_s:.2f}x faster ({luigi_s:.1f} s / {ours_s:.1f} s)",
            "≥ 1.3x faster",
            luigi_s / ours_s >= 1.3,
        ),
    ]
    if dlt is None:
        rows.append(Row("loader_vs_dlt", "dlt / our loader, same file", "dlt not available", "≥ 3x faster", True))
    else:
        rows.append(
            Row(
                "loader_vs_dlt",
                "dlt / our loader, same file (dlt in its own virtualenv)",
                f"{dlt / ours_s:.1f}x faster ({dlt:.1f} s / {ours_s:.1f} s)",
                "≥ 3x faster",
                dlt / ours_s >= 3,
            )
        )
    return rows


def end_to_end(bench: Bench) -> list:
    per_day = bench.size(1_000_000)
    source = bench.generate("loader", 1, per_day, "daily")
    env = bench.environment(source, "daily", bench.database("e2e"), bench.folder / "e2e")
    seconds = bench.cli(env, "run-etl", str(START))
    return [
        Row(
            "end_to_end",
            f"run-etl of one {per_day:,}-event day from an empty database",
            f"{seconds:.1f} s",
            "≤ 20 s",
            seconds <= 20,
        )
    ]


def daily_growth(bench: Bench) -> list:
    days, per_day = 30, bench.size(200_000)
    source = bench.generate("daily", days, per_day, "daily")
    first_env = bench.environment(source, "daily", bench.database("day1"), bench.folder / "day1")
    day_one = bench.cli(first_env, "run-etl", str(START))
    # Day 1 builds every table whole, day 2 is the first build that adds to them: day 30 / day 2
    # separates the growth with history from the step between the two kinds of build.
    day_two = bench.cli(first_env, "run-etl", end_date(2))
    env = bench.environment(source, "daily", bench.database("day30"), bench.folder / "day30")
    # Days 1 to 29 by one backfill (one build) rather than 29 daily runs: the same rows, and what a
    # warehouse grown day by day would change is in performance-notes.md.
    bench.cli(env, "backfill", str(START), end_date(days - 1))
    day_thirty = bench.cli(env, "run-etl", end_date(days))
    # A reload of the same object: the history's rework path, which keeps the rows it leaves alike.
    reload = bench.cli(env, "run-etl", end_date(days), "--force")
    ratio = day_thirty / day_one
    return [
        Row(
            "daily_growth",
            f"daily run-etl at day {days} / at day 1, {per_day:,} events a day",
            f"{ratio:.2f}x ({day_thirty:.1f} s / {day_one:.1f} s)",
            "≤ 1.3x",
            ratio <= 1.3,
        ),
        Row(
            "daily_growth",
            f"the same day {days} / day 2 (the first build that adds to the tables)",
            f"{day_thirty / day_two:.2f}x ({day_thirty:.1f} s / {day_two:.1f} s)",
            "(no target)",
            None,
        ),
        Row(
            "daily_reload",
            f"FORCE=1 run-etl of day {days} (its object unchanged) / its first run",
            f"{reload / day_thirty:.2f}x ({reload:.1f} s / {day_thirty:.1f} s)",
            "(no target)",
            None,
        ),
    ]


MEMORY_SCRIPT = """
import datetime, json, resource, sys
import luigi
from tasks import staging
from tasks.extract import DownloadEvents
from tasks.load import load_partitions
day = datetime.date.fromisoformat(sys.argv[1])
assert luigi.build([DownloadEvents(day)], local_scheduler=True, log_level="WARNING")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_partitions(staging.EVENTS, [day], route_by_day=False)
print(json.dumps({"before_mib": before / 1024, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(bench: Bench) -> list:
    peaks = {}
    for per_day in (bench.size(1_000_000), bench.size(5_000_000)):
        source = bench.generate("memory", 1, per_day, "daily")
        env = bench.environment(source, "daily", bench.database("memory"), bench.folder / f"memory{per_day}")
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(START)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[per_day] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
    small, big = sorted(peaks)
    ratio = peaks[big] / peaks[small]
    return [
        Row(
            "memory",
            f"peak memory loading {big:,} events / {small:,} events",
            f"{ratio:.2f}x ({peaks[big]:.0f} MiB / {peaks[small]:.0f} MiB)",
            "≤ 1.2x (flat)",
            ratio <= 1.2,
        )
    ]


def scale_out(bench: Bench) -> list:
    """A backfill shared by 1, 2 and 3 worker processes (each its own data dir) under one luigid."""
    import socket

    days, per_day = 14, bench.size(50_000)
    source = bench.generate("backfill", days, per_day, "daily")
    times = {}
    for processes in (1, 2, 3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        name = f"scale{processes}"
        env = bench.environment(source, "daily", bench.database(name), bench.folder / name)
        Path(env["LUIGI_CONFIG_PATH"]).write_text(
            Path(env["LUIGI_CONFIG_PATH"]).read_text().replace("scheduler_port = 1", f"scheduler_port = {port}")
        )
        bench.cli(env, "luigid-start")
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tasks", "worker"],
                cwd=ROOT,
                env={**env, "ETL_DATA_DIR": str(bench.folder / f"{name}-worker{n}")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n in range(processes - 1)
        ]
        try:
            times[processes] = bench.cli(env, "backfill", str(START), end_date(days))
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
            bench.cli(env, "luigid-stop")
    work = f"backfill {days} days x {per_day:,} events on luigid"
    return [
        Row(
            f"scale_out_{n}",
            f"{work}, {n} worker process(es) / 1",
            f"{times[n] / times[1]:.2f}x ({times[n]:.1f} s)",
            "(no target)",
            None,
            {"seconds": times},
        )
        for n in (1, 2, 3)
    ]


MEASUREMENTS = {
    "one_file_history": one_file_history,
    "one_file_month": one_file_month,
    "backfill": backfill,
    "loader": loader,
    "end_to_end": end_to_end,
    "daily_growth": daily_growth,
    "memory": memory,
    "scale_out": scale_out,
}


def verdict(row: Row) -> str:
    return "" if row.ok is None else "PASS" if row.ok else "FAIL"


def table(rows: list) -> str:
    lines = ["| work | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {row.work} | {row.measured} | {row.target} | {verdict(row)} |" for row in rows]
    return "\n".join(lines)


def write_page(path: Path, rows: list, args, seconds: float) -> None:
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    server = (
        "the server named by ETL_BENCH_DATABASE_URL"
        if os.environ.get("ETL_BENCH_DATABASE_URL")
        else "an embedded PostgreSQL 18 started by the bench"
    )
    only = "".join(f" --only {name}" for name in args.only or [])
    scale = f"{args.scale} (the sizes of the targets)" if args.scale == 1 else f"{args.scale}"
    path.write_text(f"""# Performance

What `make bench` (`python -m tools.benchmark`) measured on {datetime.date.today()}, on {machine},
against {server}, at scale {scale}, in {seconds / 60:.0f} minutes.
Each time is one run of the command a user types (`python -m tasks …`, the local scheduler, a fresh
database); each ratio compares two measurements taken side by side in the same run, since these
machines are shared and noisy (the loader's are the median of three).

{table(rows)}

What was changed to get here, and what is left for the targets not met:
[performance-notes.md](performance-notes.md).

Reproduce:

```sh
make bench                                   # everything, at the targets' sizes
.venv/bin/python -m tools.benchmark --scale 0.1 --out /tmp/performance.md   # a quick look
.venv/bin/python -m tools.benchmark --only loader --only memory{only}
ETL_BENCH_DATABASE_URL=postgresql://admin@db/postgres make bench   # on an external server
```

How each row is measured (tools/benchmark.py): the data sets come from `python -m tools.generate
bench` (valid lines, received_at spread over each day); the first-run rows time `python -m tasks
run-etl` on an empty database; the backfill rows time `python -m tasks backfill` with one and two
workers, and with one worker again over the same events with an organization list per day, each
renaming one more organization; the loader rows time `tasks.load.load_partitions` for one day
against one `COPY` of the same lines (tools/bench_baselines.py), luigi's `CopyToTable` and dlt (a
pinned version in a virtualenv of its own, skipped when it cannot be installed); the daily rows time
the run of day 1 on an empty database, of day 2 after it, and of day 30 after one backfill of days 1
to 29, then day 30 again with FORCE=1; the memory row is the peak RSS of the loading process.
""")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every data set's size (default 1.0)")
    parser.add_argument("--only", action="append", choices=sorted(MEASUREMENTS), help="measure only these")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md", help="where to write the table")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    folder = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    started = time.perf_counter()
    rows = []
    bench = Bench(args.scale, folder)
    try:
        for name in args.only or MEASUREMENTS:
            print(f"measuring {name} …", flush=True)
            measured = MEASUREMENTS[name](bench)
            for row in measured:
                target = "" if row.ok is None else f" (target {row.target}) {verdict(row)}"
                print(f"  {row.work}: {row.measured}{target}", flush=True)
            rows += measured
    finally:
        bench.close()
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(table(rows))
    write_page(args.out, rows, args, time.perf_counter() - started)
    print(
        f"\nwrote {args.out}; peak RSS of the bench itself "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
