"""Several dbt commands one after the other in one process: dbt starts and parses the project once,
not once per command. A build that takes the organization snapshot for each earlier date whose list
changed (tasks.transform.snapshot_dates) would otherwise start a dbt, about 2 s, per such date.

Run by tasks.transform as `python -P tasks/dbt_series.py` (-P: nothing in tasks/ can shadow a module
dbt imports), with the environment of a dbt. Reads the steps on stdin (a backfill's may outgrow a
command line): a JSON list of {"arguments": [...], "settings": {...}}, a dbt command line and the
build settings its models read from ETL_DBT_BUILD (dbt/macros/build_settings.sql). Writes what dbt
writes (its events and artifacts), and after each step one line of JSON on stdout, among dbt's
events: {"dbt_series_outcome": {"returncode": ..., "results": [...]}}, the step's exit code and the
results of its run_results.json. Stops at the first step that fails, with dbt's exit code for it:
1 a node failed, 2 dbt itself failed. Imports nothing of the pipeline's: it runs from any directory.
"""

import json
import os
import sys
from pathlib import Path

SUCCESS, FAILURE, ERROR = 0, 1, 2
# The key of the line this prints after each command, among dbt's events: its exit code and results.
OUTCOME = "dbt_series_outcome"


def run_results_path() -> Path:
    return Path(os.environ.get("DBT_TARGET_PATH", "target")) / "run_results.json"


def run(steps: list) -> int:
    """Run STEPS in order, each followed by its outcome on stdout; the exit code of the first that
    fails, else 0."""
    from dbt.cli.main import dbtRunner  # here: tasks.transform imports this module without dbt

    path = run_results_path()
    runner = dbtRunner()
    manifest = None
    if len(steps) > 1:
        parsed = runner.invoke(["parse"])
        interrupted(parsed)
        if not parsed.success:
            return ERROR
        manifest = parsed.result
    for step in steps:
        if manifest is not None:
            # the later commands skip parsing; each compiles its own copy, since compiling marks the
            # nodes (an ephemeral model's CTEs, once injected, would be missing from the next)
            runner = dbtRunner(manifest=manifest.deepcopy())
        os.environ["ETL_DBT_BUILD"] = json.dumps(step["settings"])
        path.unlink(missing_ok=True)  # results left by an earlier command never pass for this one's
        outcome = runner.invoke(step["arguments"])
        interrupted(outcome)
        code = SUCCESS if outcome.success else ERROR if outcome.exception else FAILURE
        results = json.loads(path.read_text())["results"] if path.exists() else []
        print(json.dumps({OUTCOME: {"returncode": code, "results": results}}), flush=True)
        if code != SUCCESS:
            return code
    return SUCCESS


def interrupted(outcome) -> None:
    """Ctrl-C stops the series as it stops dbt (the runner returns it as an outcome)."""
    if isinstance(outcome.exception, KeyboardInterrupt):
        raise outcome.exception


if __name__ == "__main__":
    sys.exit(run(json.load(sys.stdin)))
