"""Lint in the test run: ruff (lint and format, configured in ruff.toml) over the Python, sqlfluff
(dbt/.sqlfluff: postgres dialect, jinja templater) over the dbt project, and a rule of our own for
the dbt SQL that neither checks."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command, cwd=ROOT):
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_formatted():
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr + "\nrun: .venv/bin/ruff format ."


def test_sqlfluff_finds_nothing_in_the_dbt_project():
    result = run("sqlfluff", "lint", ".", "--disable-progress-bar", cwd=ROOT / "dbt")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_no_dbt_sql_filters_with_not_in_over_a_subquery():
    # `x not in (select …)` is a hashed subplan only while the subquery's rows fit in work_mem; past
    # that it scans them again for every row, which is quadratic. `not exists` plans as an anti-join
    # at any size.
    pattern = re.compile(r"\bnot\s+in\s*\(\s*select\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for folder in ("models", "macros", "snapshots", "tests")
        for path in sorted((ROOT / "dbt" / folder).rglob("*.sql"))
        for match in pattern.finditer(path.read_text())
    ]
    assert found == [], "write these as not exists:\n" + "\n".join(found)
