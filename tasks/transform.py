"""Transform: one `dbt build` of the warehouse layers for a batch of report dates, one build at a time
(after a snapshot-only build for each earlier date of the batch whose organization list changed, in
the same dbt process: tasks/dbt_series.py).

Reads the staging partitions (through tasks.load's ledgers) and the dbt project in `dbt/`; writes
staging's tables when an older version made them (tasks.staging.ensure_tables) and the summaries
of its date indexes before dbt reads it, the `historical`, `snapshots`,
`dimensional` and `reporting` schemas through dbt, dbt's log under
`<data_dir>/logs/`, and one `etl.build` record per report date once its build passed, with the
build's stamp in `etl.tested_through`. Progress and results come from dbt's structured interface
(JSON events and each command's `run_results.json`).
`make dbt` by hand runs here too; its artifacts go to `<data_dir>/dbt/target-by-hand`.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import luigi

from tasks import completion, config, console, db, dbt_series, processes, staging
from tasks.load import LoadHistory
from tasks.partitions import LoadedThrough, PartitionDate, dates, previous_day

DBT = str(Path(sys.executable).with_name("dbt"))
DBT_SERIES = Path(__file__).resolve().with_name("dbt_series.py")
# dbt/profiles.yml names dbt's sessions so; the build lock ends those a killed build left behind.
DBT_APPLICATION = "product-events-etl-dbt"
SNAPSHOT = "snap_organization"
NODE_RESULTS = ("LogModelResult", "LogTestResult", "LogSnapshotResult")
# Unit tests check the SQL, not the data: they run in `make test`, not in every build.
BUILD_OPTIONS = ("--exclude-resource-type", "unit_test")
# The history's record of the load of each event partition it reflects (dbt model).
HISTORY_PARTITIONS = "historical.hist_user_event_partition"
# Builds in a row that may each find events reloaded meanwhile before one gives up (_record).
BUILD_ATTEMPTS = 3
# dbt commands meant neither to write relations nor to check them: by hand, they run beside a build
# (SQL given to `show` is the user's to keep read-only).
READ_ONLY_COMMANDS = ("clean", "compile", "debug", "deps", "docs", "init", "list", "ls", "parse", "show", "source")
# dbt's flags (and the variables dbt reads them from) that build from no rows or a sample of them.
# Here that is no dry run: `dbt build --empty` on a built warehouse rebuilt dim_organization empty
# and cleared the history's record of the partitions it holds.
PARTIAL_INPUT_FLAGS = ("--empty", "--sample")
# dbt 1.11 reads its DBT_ENGINE_ names first, and still the older ones
PARTIAL_INPUT_VARIABLES = ("DBT_ENGINE_EMPTY", "DBT_EMPTY", "DBT_ENGINE_SAMPLE", "DBT_SAMPLE")


class DbtFailed(Exception):
    """dbt exited non-zero: a model or an error-severity test failed."""


@dataclass
class DbtRun:
    """What one dbt command did, from its events and run_results.json."""

    command: list  # the dbt command line
    log_path: Path
    returncode: int = 0
    results: list = field(default_factory=list)  # run_results.json "results"

    def problems(self, statuses=("error", "fail")) -> list:
        return [result for result in self.results if result.get("status") in statuses]

    @property
    def warnings(self) -> list:
        return self.problems(("warn",))


def target_path() -> Path:
    """Where dbt keeps its artifacts (manifest, run_results.json, compiled SQL) for this data_dir."""
    return config.data_dir() / "dbt" / "target"


def dbt_environment(conn) -> dict:
    """dbt's process environment: ours, plus libpq's variables for the connection `conn` made, so dbt
    connects exactly as the pipeline does (password from any route, TLS settings included), and
    dbt's variables naming the project and where its artifacts and log go."""
    env = {
        **{name: value for name, value in os.environ.items() if name not in PARTIAL_INPUT_VARIABLES},
        **db.child_environment(conn),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        # dbt's own variables for its flags: any command finds the project, and a flag given by hand wins
        "DBT_PROJECT_DIR": str(config.DBT_PROJECT),
        "DBT_PROFILES_DIR": str(config.DBT_PROJECT),
        "DBT_TARGET_PATH": str(target_path()),
        "DBT_LOG_PATH": str(config.data_dir() / "logs"),
    }
    # Sorts and hashes of a build over millions of rows stay in memory instead of spilling to disk.
    options = f"-c work_mem={config.dbt_work_mem()}"
    if conn.server_version >= 140000:
        # A backend whose dbt client died aborts its statement within seconds instead of finishing it.
        options += " -c client_connection_check_interval=2000"
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {options}".strip()
    return env


def dbt_command(arguments: list, dbt_vars: dict = None) -> list:
    """`dbt ARGUMENTS` (the project, artifacts and log paths come from dbt_environment)."""
    return [DBT, *arguments] + (["--vars", json.dumps(dbt_vars)] if dbt_vars else [])


def invoke(conn, steps: list, log_path: Path, on_event=None) -> list:
    """Run the dbt commands STEPS, (arguments, settings) pairs, one after the other in one process
    (tasks/dbt_series.py: dbt starts and parses once), with JSON events on stdout; each event goes
    to `on_event`, its text to `log_path`. Stops at the first that fails. Returns a DbtRun for each
    command run.

    A build's `settings` (dates, stamp, test scope) go through the environment, not --vars:
    dbt parses the whole project again whenever its vars change, and it can reuse its saved parse
    when they do not (dbt/macros/build_settings.sql)."""
    series = [{"arguments": arguments, "settings": settings} for arguments, settings in steps]
    command = [sys.executable, "-P", str(DBT_SERIES)]
    # dbt's variables for --log-format json --no-use-colors --no-use-colors-file: each command of
    # the series, its parse included, speaks in events
    env = {**dbt_environment(conn), "DBT_LOG_FORMAT": "json", "DBT_USE_COLORS": "false", "DBT_USE_COLORS_FILE": "false"}
    runs = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.getpid()
    with (
        open(log_path, "a") as log,
        subprocess.Popen(
            command,
            cwd=config.DBT_PROJECT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: processes.die_with_parent(parent),
        ) as dbt,
        db.guarded(conn, on_dead=dbt.kill),
    ):
        with contextlib.suppress(BrokenPipeError), dbt.stdin:  # gone already: its exit code says why
            json.dump(series, dbt.stdin)
        for text in dbt.stdout:
            try:
                event = json.loads(text)
            except ValueError:
                log.write(text)  # not an event (a crash before logging started): keep it as it came
                continue
            if dbt_series.OUTCOME in event:
                outcome, (arguments, _) = event[dbt_series.OUTCOME], steps[len(runs)]
                runs.append(DbtRun(dbt_command(arguments), log_path, outcome["returncode"], outcome["results"]))
                continue
            log.write(event.get("info", {}).get("msg", "") + "\n")
            if on_event:
                on_event(event)
    if all(run.returncode == 0 for run in runs) and (dbt.returncode != 0 or len(runs) < len(steps)):
        # died before a command's outcome: that command failed, whatever the exit code says
        failed = steps[min(len(runs), len(steps) - 1)][0]
        runs.append(DbtRun(dbt_command(failed), log_path, dbt.returncode or 1))
    return runs


@contextlib.contextmanager
def dbt_lock(on_wait=None):
    """A session advisory lock: one dbt on the warehouse at a time, across every scheduler and machine.
    `on_wait` is called once when another holds it, before waiting for it.

    Whoever holds it may end dbt sessions left by a holder that died (their client is gone), so a
    build never meets half-built relations of a killed one.
    """
    conn = db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:

            def take() -> bool:
                cur.execute("select pg_try_advisory_lock(hashtext('etl.dbt'))")
                return cur.fetchone()[0]

            held = take()
            if not held and on_wait:
                on_wait()
            while not held:
                # Asked again each second rather than waited for in the server: libpq resumes a
                # wait that Ctrl-C's signal interrupted, so the wait could not be stopped.
                time.sleep(1)
                held = take()
            wait = ", 10000" if conn.server_version >= 140000 else ""  # terminate waits for the exit
            cur.execute(
                f"""
                select pg_terminate_backend(pid{wait}) from pg_stat_activity
                where application_name = %s and datname = current_database() and pid <> pg_backend_pid()
                """,
                (DBT_APPLICATION,),
            )
        yield conn
    finally:
        conn.close()  # ends the session, which releases the lock even if unlock is never reached


def snapshot_dates(conn, days) -> list:
    """The run-order policy of the organization snapshot, in one place: the dates of `days` at
    which it is taken, in ascending order.

    A snapshot's change time is the date it is taken for (dbt/macros/snapshot_get_time.sql) and it
    only moves forward (dbt-core #9892, #7138): a date before its latest recorded change is
    skipped. Of the rest the first is taken, and each later date whose organization list differs
    from the day before's (a date with an unchanged list would change nothing).
    """
    with conn.cursor() as cur:
        latest = None
        if db.exists(cur, "snapshots.snap_organization"):
            cur.execute(
                "select max(greatest(dbt_valid_from, coalesce(dbt_valid_to, dbt_valid_from)))::date"
                " from snapshots.snap_organization"
            )
            latest = cur.fetchone()[0]
        candidates = [day for day in sorted(days) if latest is None or day >= latest]
        if not candidates:
            return []
        cur.execute(
            """
            select date, md5(string_agg(organization_key || ' ' || json_content::text, ',' order by organization_key))
            from staging.organization where date = any(%s) group by date
            """,
            (candidates + [previous_day(day) for day in candidates],),
        )
        lists = dict(cur.fetchall())
    return [candidates[0]] + [day for day in candidates[1:] if lists.get(day) != lists.get(previous_day(day))]


def build(days, progress=None) -> list:
    """Build the warehouse for report dates `days` (the organization snapshot taken in date order,
    then one `dbt build`, again if events up to the last date were reloaded meanwhile); writes
    their etl.build records. Returns the dbt runs."""
    log_path = config.data_dir() / "logs" / f"dbt_build_{days[0]}_{days[-1]}.log"
    runs = []
    with dbt_lock() as conn:
        days = sorted(set(days) - completion.BUILDS.done(days, fresh=True))  # built by another run meanwhile?
        if not days:
            return runs
        with db.transaction() as ddl:
            # Staging as this version reads it, even when every partition was loaded by an older one.
            staging.ensure_tables(ddl)
        with conn.cursor() as cur:
            staging.summarize_date_indexes(cur)  # so that dbt, and the next loads, read by date
        points = snapshot_dates(conn, days)
        # The snapshot of each earlier date whose list changed, in date order, then the build (which
        # takes the last one), in one dbt process.
        snapshot = ["build", "--select", SNAPSHOT, *BUILD_OPTIONS]
        steps = [(snapshot, {"snapshot_date": point.isoformat(), "test_scope": "changed"}) for point in points[:-1]]
        # Data tests check the rows no build has tested: this build's, and any a failed build wrote
        # since the last that passed (etl.tested_through). make test-warehouse checks everything.
        settings = {
            "run_dates": [day.isoformat() for day in days],
            "test_scope": "changed",
            "tested_through": completion.tested_through(),
        }
        arguments = ["build", *BUILD_OPTIONS]
        if points:
            settings["snapshot_date"] = points[-1].isoformat()
        else:
            arguments += ["--exclude", SNAPSHOT]
        for _ in range(BUILD_ATTEMPTS):
            with conn.cursor() as cur:
                # The rows this build writes are stamped by the server's clock, not this machine's
                # (macro build_stamp): builds from several machines then stay in the order they ran.
                cur.execute("select clock_timestamp()::text")
                settings["build_stamp"] = cur.fetchone()[0]
            runs += [_checked(run) for run in invoke(conn, steps + [(arguments, settings)], log_path, progress)]
            steps = []  # taken: a build again (below) takes only the last date's snapshot
            reloaded = _record(conn, days, runs, settings["build_stamp"])
            if not reloaded:
                break
            runs.pop()  # the records say what the build they vouch for did
            console.say(f"events of {console.span(reloaded)} were reloaded during the build: building again")
        else:
            raise DbtFailed(f"events of {console.span(reloaded)} were reloaded during each of {BUILD_ATTEMPTS} builds")
    return runs


def _record(conn, days, runs, build_stamp) -> list:
    """Write the etl.build records of `days` and the stamp of their build, whose tests passed, as
    etl.tested_through, unless the history is behind an event partition up to the last of them:
    then return the partitions reloaded since it took them in (the build runs again), or fail when
    one is missing, removed for a reload (FORCE=1) that has not committed."""
    conn.autocommit = False  # one transaction: ensure_tables' lock is held until the records are in
    try:
        with conn, conn.cursor() as cur:
            completion.ensure_tables(cur)
            # FORCE=1 removes a partition's ledger row before it reloads it: until the reload commits,
            # the partition is missing here, and then its new load is seen.
            cur.execute(
                f"select partition_date, loaded.load_id is null from {staging.EVENTS.ledger_table} as loaded"
                f" full join {HISTORY_PARTITIONS} as taken using (partition_date)"
                " where partition_date <= %s and (loaded.load_id is distinct from taken.processed_load_id"
                " or loaded.load_id is null and taken.processed_at is not null) order by 1",
                (days[-1],),
            )
            behind = cur.fetchall()
            missing = [day for day, is_missing in behind if is_missing]
            if missing:
                raise DbtFailed(
                    f"events of {console.span(missing)} are not in staging (removed for a reload that has not"
                    " committed yet): the build of later dates records nothing; run them again once it has"
                )
            if behind:
                return [day for day, _ in behind]
            # One statement: every date of the build gets the same built_at, the summary counts it once.
            cur.execute(
                """
                insert into etl.build (run_date, results) select unnest(%s::date[]), %s
                on conflict (run_date) do update set built_at = now(), results = excluded.results
                """,
                (days, json.dumps(results_summary(runs))),
            )
            cur.execute(
                "insert into etl.tested_through (build_stamp) values (%s)"
                " on conflict (only_row) do update set build_stamp = excluded.build_stamp",
                (build_stamp,),
            )
            return []
    finally:
        conn.autocommit = True


def results_summary(runs) -> dict:
    """Node counts by status and every warning, from run_results.json of the invocations."""
    statuses = {}
    warnings = []
    for run in runs:
        for result in run.results:
            statuses[result["status"]] = statuses.get(result["status"], 0) + 1
            if result["status"] == "warn":
                warnings.append({"node": _node(result), "message": _finding(result)})
    return {"statuses": statuses, "warnings": warnings}


def status_counts(runs) -> str:
    """The runs' node counts by status, e.g. `40 PASS, 2 WARN`."""
    statuses = results_summary(runs)["statuses"]
    return ", ".join(f"{count} {status.upper()}" for status, count in sorted(statuses.items()))


def _node(result) -> str:
    # unique_id is resource.package.name[.hash]: the name says which check it is
    return result["unique_id"].split(".")[2]


def _finding(result) -> str:
    """What a node's result says: the rows a test found, else dbt's message."""
    found = result.get("failures")
    return f"{found} row(s) found" if found else (result.get("message") or result["status"]).strip()


def check_warehouse() -> DbtRun:
    """Every data test on every row of the warehouse (test_scope all): `make test-warehouse`, and the
    end of a backfill into a warehouse earlier builds wrote. A build tests only the rows it wrote;
    this also sees what went wrong in rows written before. Under the build lock, so it never reads a
    build half done."""
    log_path = config.data_dir() / "logs" / "dbt_test_warehouse.log"
    with dbt_lock() as conn:
        return invoke(conn, [(["test", *BUILD_OPTIONS], {"test_scope": "all"})], log_path)[-1]


def built_before(moment=None) -> bool:
    """Whether etl.build records a build (before `moment`, by the database's clock)."""
    with db.transaction() as conn, conn.cursor() as cur:
        if not db.exists(cur, "etl.build"):
            return False
        cur.execute(
            "select exists (select from etl.build where built_at < coalesce(%s::timestamptz, 'infinity'))", (moment,)
        )
        return cur.fetchone()[0]


def failures(run: DbtRun) -> list:
    """One line per failed node of the run: its name and what it found."""
    return [f"{_node(result)}: {_finding(result)}" for result in run.problems()]


def _checked(run: DbtRun) -> DbtRun:
    if run.returncode != 0:
        problems = "; ".join(failures(run))
        raise DbtFailed(f"dbt build failed (exit {run.returncode}): {problems or 'see the log'}. Log: {run.log_path}")
    return run


class BuildWarehouse(luigi.Task):
    """Build every warehouse layer, and the report rows of each date, once staging is loaded up to it."""

    date = PartitionDate(description="report date D (a batch of dates when Luigi batches the runs)")
    loaded_through = LoadedThrough()
    resources = {"dbt": 1}

    @property
    def priority(self):
        # Among ready builds the earliest date goes first (its batch takes the later ones along), so
        # the organization snapshot moves forward in time.
        return -min(dates(self)).toordinal()

    def requires(self):
        # LoadHistory of the latest date covers every earlier one.
        return LoadHistory(date=max(*dates(self), self.loaded_through))

    def output(self):
        return [completion.BUILDS.target(day) for day in dates(self)]

    def run(self):
        def progress(event):
            # dbt's structured events: one per node as it finishes, with its index and the total.
            data = event.get("data", {})
            if event.get("info", {}).get("name") in NODE_RESULTS and data.get("total"):
                node = data.get("node_info", {}).get("node_name", "")
                line = f"dbt {data['index']}/{data['total']} {data.get('status', '')} {node}"
                self.set_progress_percentage(round(100 * data["index"] / data["total"]))
                self.set_status_message(line)
                console.status(line)

        runs = build(list(dates(self)), progress)
        summary = results_summary(runs)
        counts = status_counts(runs)
        warned = "; ".join(f"{w['node']}: {w['message']}" for w in summary["warnings"])
        self.set_status_message(f"dbt: {counts}" + (f"; warnings: {warned}" if warned else ""))
        self.summary = f"built the warehouse for {console.span(dates(self))}: dbt {counts or 'nothing to do'}"


def changes_warehouse(arguments: list) -> bool:
    """Whether dbt ARGUMENTS may write relations, or read them while a build writes (a test): any
    command but those known to do neither, and but a request for help. Arguments that start with
    an option (`--debug ls`) count as changing it: telling an option's value from the command
    would need dbt's own parser, and waiting for a build is the safe side."""
    asks_help = "-h" in arguments or "--help" in arguments
    return bool(arguments) and arguments[0] not in READ_ONLY_COMMANDS and not asks_help


def partial_input(arguments: list) -> list:
    """dbt's flags among ARGUMENTS, and dbt's variables set here, that build from partial input."""
    given = [argument for argument in arguments if argument.split("=")[0] in PARTIAL_INPUT_FLAGS]
    return given + [f"{name}={os.environ[name]}" for name in PARTIAL_INPUT_VARIABLES if os.environ.get(name)]


def run_by_hand(arguments: list) -> int:
    """`make dbt ARGS="..."`: any dbt command against the pipeline's database, in this terminal.

    A command that changes the warehouse may not build from partial input, and runs as a build
    does: under the build lock (a build waits for it, and it for a build), named as a build's (so
    that the next holder ends what a killed one left), dying with this process. Its artifacts go
    to a folder of their own, not the one builds read their results from."""
    writes = changes_warehouse(arguments)
    partial = partial_input(arguments)
    if partial and writes:
        print(
            f"error: refused {' '.join(partial)}: dbt would build this warehouse from no rows or only a sample,"
            " leaving its tables short and moving its incremental state on without the rows. To try the models,"
            " build a scratch warehouse (make run-etl with another ETL_DATABASE_URL and ETL_DATA_DIR).",
            file=sys.stderr,
        )
        return 2
    command = dbt_command(arguments or ["--help"])
    if not writes:
        conn = db.connect()
        try:
            env = _by_hand_environment(conn)
        finally:
            conn.close()
        env["ETL_DBT_APPLICATION"] = f"{DBT_APPLICATION}-by-hand"  # not a build's: see dbt_lock
        try:
            return subprocess.call(command, cwd=config.DBT_PROJECT, env=env)
        except KeyboardInterrupt:  # e.g. `docs serve`, which runs until Ctrl-C: dbt got it too
            return 128 + signal.SIGINT

    def waiting():
        console.say("waiting for the dbt running on this warehouse (a build, or a test or dbt run by hand) to finish")

    parent = os.getpid()
    try:
        with (
            dbt_lock(on_wait=waiting) as conn,
            subprocess.Popen(
                command,
                cwd=config.DBT_PROJECT,
                # a build's name: should this process die, the next holder of the lock ends its sessions
                env={**_by_hand_environment(conn), "ETL_DBT_APPLICATION": DBT_APPLICATION},
                preexec_fn=lambda: processes.die_with_parent(parent),
            ) as dbt,
            db.guarded(conn, on_dead=dbt.kill),
        ):
            try:
                return dbt.wait()
            except KeyboardInterrupt:
                dbt.wait()  # Ctrl-C reached dbt too: the lock goes once it has cancelled its queries
                raise
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # as a shell reports it


def _by_hand_environment(conn) -> dict:
    env = {**dbt_environment(conn), "DBT_TARGET_PATH": str(target_path().with_name("target-by-hand"))}
    if not sys.stdout.isatty():
        # dbt colours what it prints even into a pipe or a file; a setting of the user's wins
        env.setdefault("DBT_USE_COLORS", "false")
    return env
