#!/usr/bin/env bash
# Install the locked packages into .venv/ (make setup: what the pipeline runs with; make setup-dev:
# the test, lint and documentation tools too), saying what it installs and, on a terminal, how far.
set -euo pipefail
pipenv=$1
kind=$2
if [ "$kind" = dev ]; then
    what="the test, lint and documentation tools"; section=develop; flag=--dev
else
    what="the pipeline's packages"; section=default; flag=
fi
count=$(python3 -c "import json, sys; print(len(json.load(open('Pipfile.lock'))[sys.argv[1]]))" "$section")
echo "setup: installing $what ($count locked packages) into .venv/ with pipenv"
start=$SECONDS
# Counted with a glob, not ls: on a clean checkout .venv/ does not exist yet, and ls would fail the script.
installed() { local found=(.venv/lib/python*/site-packages/*.dist-info); echo "${#found[@]}"; }
shopt -s nullglob
before=$(installed)
if [ -t 1 ]; then
    # A progress line on a terminal only, so that logs keep one line per step.
    ( while sleep 2; do printf '\rsetup: %s packages in .venv/ …' "$(installed)"; done ) &
    progress=$!
    trap 'kill $progress 2>/dev/null; printf "\r\033[K"' EXIT
fi
"$pipenv" sync $flag >.venv-setup.log 2>&1 || { cat .venv-setup.log >&2; rm -f .venv-setup.log; exit 1; }
if [ "$kind" = runtime ]; then
    # pip byte-compiles every module it installs (pipenv gives it no way to be told otherwise): 86 MB
    # of .pyc, mostly for parts of numpy, networkx, sqlalchemy and fontTools a run never loads. Keep
    # the .pyc of what a run imports only, compiled here so that runs with PYTHONDONTWRITEBYTECODE
    # set do not compile it again each time.
    find .venv/lib -name __pycache__ -type d -prune -exec rm -rf {} +
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "import tasks.workflows, tasks.luigid, \
        tasks.export, tasks.heatmap, luigi.server, luigi.db_task_history, dbt.cli.main, dbt.task.build, \
        dbt.task.run_operation, dbt.parser.manifest, dbt.adapters.postgres.impl, boto3, botocore.session, \
        s3transfer.manager"
fi
rm -f .venv-setup.log
[ -t 1 ] && { kill $progress 2>/dev/null; printf '\r\033[K'; trap - EXIT; }
echo "setup: $(( $(installed) - before )) packages installed in $((SECONDS - start)) s; .venv/ is $(du -sm .venv | cut -f1) MB"
