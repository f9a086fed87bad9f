"""docker-compose.yml and Dockerfile: schema-valid, the promised services present, lint-clean.

Offline: check-jsonschema uses its vendored compose schema and hadolint is a local binary.
Each check skips only when its tool is missing from the environment.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def _tool(name):
    # The venv's bin first: `python -m pytest` does not put it on PATH.
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_compose_spec():
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_no_obsolete_version_key(compose):
    assert "version" not in compose


def test_compose_services(compose):
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "luigid", "etl"} <= services.keys()

    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "healthcheck" in services["minio"]

    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    seeds = " ".join(services["minio-init"]["volumes"])
    assert "./data/events_sample.json:" in seeds and "./data/orgs_sample.json:" in seeds

    luigid = services["luigid"]
    assert luigid["command"] == ["luigid", "--port", "8082"]
    assert any(str(port).endswith("8082:8082") for port in luigid["ports"])


def test_etl_service_wiring(compose):
    etl = compose["services"]["etl"]
    assert etl["build"]["context"] == "."
    assert etl["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "luigid": {"condition": "service_started"},
    }
    env = etl["environment"]
    assert "@postgres:5432/" in env["ETL_DATABASE_URL"]
    assert env["ETL_SOURCE_URL"] == "s3://events"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["ETL_DATA_DIR"] == "/work/data-out"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()
    assert any(volume.endswith(":/work/data-out") for volume in etl["volumes"])
    # `docker compose up` brings up the infrastructure only.
    assert etl["profiles"] == ["etl"]


def test_luigid_records_task_history_in_postgres():
    cfg = (REPO / "docker" / "luigid.cfg").read_text()
    assert "record_task_history = true" in cfg
    assert "db_connection = postgresql+psycopg2://" in cfg and "@postgres:5432/" in cfg


def test_dockerfile_passes_hadolint():
    # cwd=REPO so hadolint reads .hadolint.yaml; "style" makes every finding fail.
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
