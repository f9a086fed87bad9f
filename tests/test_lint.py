"""Lint in the test run: ruff (lint and format, configured in ruff.toml) over the Python, sqlfluff
(dbt/.sqlfluff: postgres dialect, jinja templater) over the dbt project."""

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
