# The pipeline image: `make run-etl` in the compose etl service, `luigid` in the luigid service.
FROM python:3.11-slim

# Same source as the Pipfile's `url = "${PIP_INDEX_URL}"`, so no index host is written here.
# Build args show in the image history: use an index URL without credentials.
ARG PIP_INDEX_URL

# make runs the pipeline's entry points. (Unpinned apt package: see .hadolint.yaml.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

# The pipenv version the lock file was written with, so `pipenv sync` reads it the same way.
RUN test -n "$PIP_INDEX_URL" || { echo "build with --build-arg PIP_INDEX_URL=<package index URL>" >&2; exit 1; } \
    && pip install --no-cache-dir pipenv==2026.10.3

# Non-root: the embedded PostgreSQL (used when ETL_DATABASE_URL is empty) refuses to run as root,
# and nothing here needs root at run time.
# /work/data-out exists here so a fresh named volume mounted on it inherits this owner.
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
# .venv/.synced is the Makefile's setup stamp; without it every make target would re-sync
# (with --dev, from the network) at run time. `make test` is for clones, not for this image.
RUN pipenv sync && touch .venv/.synced && rm -rf "$HOME/.cache"

# Named paths instead of `COPY . .`, so the host's .venv, .bootstrap and data/ never enter the image
# (the host's .venv would replace the one built above).
COPY --chown=10001:10001 Makefile luigi.cfg ./
COPY --chown=10001:10001 tasks/ tasks/
COPY --chown=10001:10001 dbt/ dbt/
COPY --chown=10001:10001 data/events_sample.json data/orgs_sample.json data/

CMD ["make", "help"]
