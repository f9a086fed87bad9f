"""Extract: copy the source objects of one date into `<data_dir>/raw/<dataset>/<date>/`.

Reads the source root (`s3://bucket[/prefix]` through boto3, or a local folder) named by
`[source] url`; writes one folder per dataset and date holding the objects and a
`_manifest.json` (source key and size of each). The folder appears whole or not at all.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import luigi

from tasks import config

MANIFEST = "_manifest.json"


class Source:
    """The source root: list, size and copy objects by key, on S3 or in a local folder."""

    def __init__(self, url: str):
        self.url = url
        parts = urlsplit(url)
        self.is_s3 = parts.scheme == "s3"
        if self.is_s3:
            self.bucket = parts.netloc
            self.prefix = parts.path.strip("/")
        else:
            self.root = Path(url).resolve()

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._s3_key(key)}" if self.is_s3 else str(self.root / key)

    def list(self, prefix: str) -> list:
        """(key, size) of every object under `prefix` (a key ending in '/'), sorted by key."""
        if self.is_s3:
            paginator = self._client().get_paginator("list_objects_v2")
            # A daily prefix may hold more than 1,000 objects: the paginator follows every page.
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self._s3_key(prefix))
            root = self._s3_key("")
            found = [
                (obj["Key"][len(root) :], obj["Size"])
                for page in pages
                for obj in page.get("Contents", [])
                if not obj["Key"].endswith("/")
            ]
        else:
            folder = self.root / prefix
            found = [
                (path.relative_to(self.root).as_posix(), path.stat().st_size)
                for path in (folder.rglob("*") if folder.is_dir() else [])
                if path.is_file()
            ]
        return sorted(found)

    def size(self, key: str):
        """Size of the object in bytes, or None when there is no such object."""
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                return self._client().head_object(Bucket=self.bucket, Key=self._s3_key(key))["ContentLength"]
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        path = self.root / key
        return path.stat().st_size if path.is_file() else None

    def objects(self, key: str) -> list:
        """(key, size) of what `key` names: every object under a prefix, or the one object."""
        if key.endswith("/"):
            return self.list(key)
        size = self.size(key)
        return [] if size is None else [(key, size)]

    def copy(self, key: str, destination: Path) -> int:
        """Copy one object to `destination`; returns the bytes written."""
        if self.is_s3:
            self._client().download_file(self.bucket, self._s3_key(key), str(destination))
        else:
            shutil.copyfile(self.root / key, destination)
        return destination.stat().st_size

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _client(self):
        if not hasattr(self, "_s3"):
            import boto3
            from botocore.config import Config

            # Endpoint (AWS_ENDPOINT_URL[_S3]) and credentials come from boto3's own chain.
            self._s3 = boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))
        return self._s3


def source() -> Source:
    return Source(config.source_url())


def download(objects: list, destination: Path) -> None:
    """Copy `objects` into `destination` atomically: a temporary folder renamed when complete."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        manifest = []
        src = source()
        for number, (key, expected) in enumerate(objects):
            # Numbered names keep the source order and cannot collide, whatever the keys look like.
            local = staging / f"{number:05d}-{Path(key).name}"
            written = src.copy(key, local)
            if written != expected:
                raise IOError(f"{src.describe(key)}: expected {expected} bytes, received {written}")
            manifest.append({"key": key, "size": written, "file": local.name})
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.rename(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def downloaded(folder: Path) -> list:
    """(source key, local path) of each object a download folder holds, in source order."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [(entry["key"], folder / entry["file"]) for entry in manifest]


class SourceTarget(luigi.Target):
    """Exists when the source holds at least one object at `key` (an object or a prefix)."""

    def __init__(self, key: str):
        self.key = key

    def exists(self) -> bool:
        return bool(source().objects(self.key))


class EventsArrived(luigi.ExternalTask):
    """The daily events of `date`, written by someone else: until they exist the run waits."""

    date = luigi.DateParameter(description="partition date")

    def output(self):
        return SourceTarget(config.events_key().format(date=self.date.isoformat()))


class DownloadDataset(luigi.Task):
    """Copy one dataset's objects for `date` into `<data_dir>/raw/<dataset>/<date>/`."""

    date = luigi.DateParameter(description="partition date")
    dataset = None  # set by subclasses

    def source_key(self) -> str:
        raise NotImplementedError

    def output(self):
        return luigi.LocalTarget(str(config.partition_path("raw", self.dataset, self.date)))

    def run(self):
        key = self.source_key()
        objects = source().objects(key)
        if not objects:
            raise FileNotFoundError(
                f"source {source().describe(key)} not found: check [source] url / ETL_SOURCE_URL and the key"
            )
        self.set_status_message(f"downloading {len(objects)} object(s) from {source().describe(key)}")
        download(objects, Path(self.output().path))


class DownloadEvents(DownloadDataset):
    """Events of `date`: the day's objects (daily layout) or the whole file (one-file layout)."""

    dataset = "events"

    def requires(self):
        return EventsArrived(self.date) if config.is_daily(config.events_key()) else []

    def source_key(self) -> str:
        return config.events_key().format(date=self.date.isoformat())


class DownloadOrganizations(DownloadDataset):
    """The full current organization list, as it stands when `date` is loaded."""

    dataset = "organizations"

    def source_key(self) -> str:
        return config.orgs_key().format(date=self.date.isoformat())
