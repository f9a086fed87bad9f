# The pipeline image: `make run-etl` in the compose etl service, `make worker` in the worker
# service, `luigid` in the luigid service.
# Pinned to a patch release (and Debian release), so a rebuild gets the same Python.
FROM python:3.11.14-slim-trixie

# Same source as the Pipfile's `url = "${PIP_INDEX_URL}"`, so no index host is written here.
# Optional: unset or empty means pip's own built-in default index (as the Makefile does).
# Build args show in the image history: use an index URL without credentials.
ARG PIP_INDEX_URL

# make runs the pipeline's entry points. (Unpinned apt package: see .hadolint.yaml.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

# The pipenv version the lock file was written with, so `pipenv sync` reads it the same way.
# An empty PIP_INDEX_URL is unset rather than handed to pip, which then uses its default index.
RUN if [ -z "${PIP_INDEX_URL:-}" ]; then unset PIP_INDEX_URL; fi \
    && pip install --no-cache-dir pipenv==2026.10.3

# Non-root: the embedded PostgreSQL (used when ETL_DATABASE_URL is empty) refuses to run as root,
# and nothing here needs root at run time.
# /work/data-out is the data dir (ETL_DATA_DIR below): a worker container writes it on its own
# disk; compose bind-mounts a host folder on it for the etl service (see docker-compose.yml).
RUN groupadd --gid 10001 etl \
    && useradd --create-home --uid 10001 --gid 10001 etl \
    && mkdir -p /app /work/data-out \
    && chown 10001:10001 /app /work/data-out
WORKDIR /app
# Numeric, so runtimes that check "non-root" without reading /etc/passwd can verify it.
USER 10001:10001

# An in-project venv (/app/.venv), not `--system`: it is exactly where `make setup` puts it, so the
# Makefile's targets find their tools in the image as in a clone, and the system Python keeps
# only pipenv. Runtime packages only: the image runs the pipeline, not the test suite.
# Pipfile and lock come first so that code changes reuse the cached dependency layer.
ENV PIPENV_VENV_IN_PROJECT=1 \
    PATH=/app/.venv/bin:$PATH \
    ETL_DATA_DIR=/work/data-out
COPY --chown=10001:10001 Pipfile Pipfile.lock ./
# The Pipfile's source is `${PIP_INDEX_URL}`, so pipenv needs a value: without the build arg, pip's
# built-in default index, asked from the system Python's pip (the Makefile's fallback too).
# .venv/.synced is the Makefile's setup stamp; without it every make target would re-sync
# (with --dev, from the network) at run time. `make test` is for clones, not for this image.
RUN if [ -z "${PIP_INDEX_URL:-}" ]; then \
        PIP_INDEX_URL="$(python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')"; \
    fi \
    && test -n "$PIP_INDEX_URL" \
    && export PIP_INDEX_URL \
    && pipenv sync && touch .venv/.synced && rm -rf "$HOME/.cache"

# Named paths instead of `COPY . .`, so the host's .venv, .bootstrap and data/ never enter the image
# (the host's .venv would replace the one built above).
COPY --chown=10001:10001 Makefile luigi.cfg ./
COPY --chown=10001:10001 tasks/ tasks/
COPY --chown=10001:10001 dbt/ dbt/
COPY --chown=10001:10001 data/events_sample.json data/orgs_sample.json data/

CMD ["make", "help"]
