"""Extract: find the source objects of each date and land them where its load will read them.

Reads the source root named by `[source] url` (`s3://bucket[/prefix]` through boto3, or a local
folder). A local source is copied into `<data_dir>/raw/<dataset>/<key>` (each object once, however
many dates share it, replaced atomically); an S3 source is not copied: every worker's load streams
it from S3, so no task reads another worker's disk. Writes the download record of each date
(`etl.download`: which objects, where landed) as the task's completion record.
"""

import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import luigi

from tasks import completion, config, console, db, processes
from tasks.partitions import PartitionDate, dates


class SourceError(Exception):
    """The source cannot be read as a whole: the task fails with this message and loads nothing."""


@dataclass(frozen=True)
class SourceObject:
    key: str  # under the source root
    size: int
    path: str | None = None  # the landed local copy; None: read it from the source
    # Which bytes: S3's ETag, or the modification time of the local file landed. A correction of
    # the same size is then another download (load._commit); "" in downloads of older versions.
    version: str = ""


class Source:
    """The source root: list, size, open and copy objects by key, on S3 or in a local folder."""

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

    def objects(self, key: str) -> list:
        """What `key` names: every object under a prefix (a key ending in '/'), or the one object."""
        if key.endswith("/"):
            return self._list(key)
        found = self._object(key)
        return [] if found is None else [found]

    def open(self, obj: SourceObject):
        """A binary stream of the object's bytes (the landed copy when there is one)."""
        if obj.path:
            return open(obj.path, "rb")
        if not self.is_s3:
            return open(self.root / obj.key, "rb")
        response = self._call("read", obj.key, self._client().get_object, Bucket=self.bucket, Key=self._s3_key(obj.key))
        return _S3Body(self, obj.key, response["Body"])

    def copy(self, key: str, destination: Path) -> int:
        """Copy one object of a local source to `destination`; returns the bytes written."""
        shutil.copyfile(self.root / key, destination)
        return destination.stat().st_size

    def _list(self, prefix: str) -> list:
        if self.is_s3:
            root = self._s3_key("")
            # A daily prefix may hold more than 1,000 objects: the paginator follows every page.
            pages = self._call(
                "list",
                prefix,
                lambda: list(
                    self._client()
                    .get_paginator("list_objects_v2")
                    .paginate(Bucket=self.bucket, Prefix=self._s3_key(prefix))
                ),
            )
            found = [
                SourceObject(obj["Key"][len(root) :], obj["Size"], version=obj["ETag"])
                for page in pages
                for obj in page.get("Contents", [])
                if not obj["Key"].endswith("/")
            ]
        else:
            folder = self.root / prefix
            found = [
                SourceObject(_key_text(path.relative_to(self.root)), path.stat().st_size)
                for path in (folder.rglob("*") if folder.is_dir() else [])
                if path.is_file()
            ]
        return sorted(found, key=lambda obj: obj.key)

    def _object(self, key: str):
        if not self.is_s3:
            path = self.root / key
            return SourceObject(key, path.stat().st_size) if path.is_file() else None
        from botocore.exceptions import ClientError

        try:
            response = self._call(
                "read", key, self._client().head_object, Bucket=self.bucket, Key=self._s3_key(key), missing_ok=True
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                self._check_bucket()  # a HEAD of a key in no bucket is a 404 too
                return None
            raise
        return SourceObject(key, response["ContentLength"], version=response["ETag"])

    def _check_bucket(self) -> None:
        """Raise when the bucket itself is missing. Any other answer (no right to ask, an endpoint
        that stopped answering) leaves the key's own 404 to say "not found"."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client().head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                raise SourceError(
                    f"bucket {self.bucket!r} not found (endpoint {self._client().meta.endpoint_url}):"
                    " check [source] url / ETL_SOURCE_URL"
                ) from None
        except BotoCoreError:
            pass

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _client(self):
        if not hasattr(self, "_s3"):
            import boto3
            from botocore.config import Config

            # Endpoint (AWS_ENDPOINT_URL[_S3]) and credentials come from boto3's own chain. Timeouts
            # and attempts are bounded so an endpoint that never answers fails the task in minutes.
            timeout = config.source_timeout()
            self._s3 = boto3.client(
                "s3",
                config=Config(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"mode": "standard", "total_max_attempts": config.source_attempts()},
                ),
            )
        return self._s3

    def _call(self, action: str, key: str, function, *args, missing_ok=False, **kwargs):
        """Call S3; any failure becomes a SourceError naming the object and the endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if missing_ok and code in ("404", "NoSuchKey", "NotFound"):
                raise
            raise SourceError(self._failure(action, key, _client_error(code, err))) from None
        except BotoCoreError as err:
            raise SourceError(self._failure(action, key, str(err))) from None

    def _failure(self, action: str, key: str, reason: str) -> str:
        endpoint = self._client().meta.endpoint_url
        return f"cannot {action} {self.describe(key)} (endpoint {endpoint}): {reason}"


def _client_error(code: str, err) -> str:
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
        return f"{code}: check the credentials (boto3's chain: AWS_ACCESS_KEY_ID, AWS_PROFILE, …)"
    if code == "NoSuchBucket":
        return "no such bucket: check [source] url / ETL_SOURCE_URL"
    return f"{code}: {err.response.get('Error', {}).get('Message', '')}".strip(": ")


class _S3Body:
    """An S3 object's body as a file: a read error or a short body names the object and endpoint."""

    def __init__(self, src: Source, key: str, body):
        self._src, self._key, self._body = src, key, body

    def read(self, size=-1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(size if size >= 0 else None)
        except BotoCoreError as err:  # a read timeout, a reset, a body shorter than its length
            raise SourceError(self._src._failure("read", self._key, str(err))) from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _key_text(relative: Path) -> str:
    """A local file's key, refusing names that are not UTF-8 (they cannot be named in the warehouse)."""
    key = relative.as_posix()
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(key).decode("utf-8", "backslashreplace")
        raise SourceError(f"a source file name is not UTF-8: {shown} (rename it)") from None
    return key


def source() -> Source:
    return Source(config.source_url())


# ---------------------------------------------------------------------------------------------
# Landing local objects


def landing_folder(dataset: str) -> Path:
    return config.data_dir() / "raw" / dataset


def _temporary_name(path: Path) -> Path:
    """.<name>.<host>.<pid>.tmp beside the copy; a name too long to take that in 255 bytes (the
    limit of a file name) by its digest instead."""
    name, tail = path.name, f".{socket.gethostname()}.{os.getpid()}.tmp"
    if len(f".{name}{tail}".encode()) > 255:
        name = hashlib.sha256(name.encode()).hexdigest()
    return path.with_name(f".{name}{tail}")


def remove_stale_temporaries(folder: Path) -> list:
    """Remove temporary files of downloads killed mid-way on this host; returns what was removed."""
    removed = []
    host = socket.gethostname()
    for path in folder.rglob(".*.tmp") if folder.is_dir() else []:
        # .<name>.<host>.<pid>.tmp, where a host name may hold dots
        named = re.fullmatch(rf"\..+\.{re.escape(host)}\.(\d+)\.tmp", path.name, re.DOTALL)
        if named and not processes.alive(int(named.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def land(src: Source, dataset: str, obj: SourceObject) -> SourceObject:
    """Copy one object of a local source into the landing folder, unless an equal copy is there.

    A copy is equal when it has the source file's size and modification time, which the copy
    takes from it: a file replaced by one of the same size, even with an older time (`cp -p`,
    `rsync -t`, a restore from backup), is copied again. The copy is written to a temporary file
    and renamed into place, so a reader (or a concurrent run landing the same object) sees the old
    or the new file, never half of one.
    """
    relative = PurePosixPath(obj.key)
    if relative.is_absolute() or ".." in relative.parts:
        raise SourceError(f"source key {obj.key!r} points outside the source root")
    destination = landing_folder(dataset) / relative
    source_time = (src.root / obj.key).stat().st_mtime_ns
    if not (
        destination.is_file()
        and destination.stat().st_size == obj.size
        and destination.stat().st_mtime_ns == source_time
    ):
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_name(destination)
        try:
            written = src.copy(obj.key, temporary)
            if written != obj.size:
                raise SourceError(f"{src.describe(obj.key)}: expected {obj.size} bytes, copied {written}; re-run")
            # the time read before the copy: a source changed during it has a later one, and lands again
            os.utime(temporary, ns=(source_time, source_time))
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
    return SourceObject(obj.key, obj.size, str(destination), str(source_time))


# ---------------------------------------------------------------------------------------------
# Tasks


class SourceTarget(luigi.Target):
    """Exists when the source holds at least one object at `key` (an object or a prefix)."""

    def __init__(self, key: str):
        self.key = key

    def exists(self) -> bool:
        # Whether anything is there, not whether it is readable: a bad object is reported by the
        # download, with a clear message, not by a completion check.
        try:
            return bool(source().objects(self.key))
        except SourceError:
            return True


class ObjectsArrived(luigi.ExternalTask):
    """A dataset's objects of `date` in a daily layout, written by someone else: a run that needs
    them before they exist ends with [retcode] missing_data (20)."""

    date = luigi.DateParameter(description="partition date")
    key = None  # the setting that names the dataset's objects, set by subclasses

    def output(self):
        return SourceTarget(config.key_of(self.key(), self.date))


class EventsArrived(ObjectsArrived):
    """The events of `date` in the daily layout: there once their prefix holds objects."""

    key = staticmethod(config.events_key)


class OrganizationsArrived(ObjectsArrived):
    """The organization list of `date` when `orgs_key` is daily: there once its object is."""

    key = staticmethod(config.orgs_key)


class DownloadDataset(luigi.Task):
    """Find one dataset's source objects for each date and land them (a local source) once."""

    date = PartitionDate(description="partition date (a batch of dates when Luigi batches the runs)")
    dataset = None  # set by subclasses
    arrived = None  # the task whose key names the dataset's objects; waited for when it is daily

    def source_key(self, day) -> str:
        return config.key_of(self.arrived.key(), day)

    def requires(self):
        if config.is_daily(self.arrived.key()):
            return [self.arrived(day) for day in dates(self)]
        return []

    def output(self):
        return [completion.DOWNLOADS.target(day, self.dataset) for day in dates(self)]

    def run(self):
        src = source()
        remove_stale_temporaries(landing_folder(self.dataset))
        by_key = {}
        for day in dates(self):
            by_key.setdefault(self.source_key(day), []).append(day)
        records = []
        sizes = {}
        for key, days in by_key.items():
            objects = src.objects(key)
            if not objects:
                raise SourceError(
                    f"source {src.describe(key)} not found: check [source] url / ETL_SOURCE_URL and the key"
                )
            self.set_status_message(f"{len(objects)} object(s) at {src.describe(key)}")
            if not src.is_s3:
                objects = [land(src, self.dataset, obj) for obj in objects]
            manifest = json.dumps([asdict(obj) for obj in objects])
            records += [(self.dataset, day, manifest) for day in days]
            sizes.update((obj.key, obj.size) for obj in objects)
        with db.transaction() as conn, conn.cursor() as cur:
            completion.ensure_tables(cur)
            cur.executemany(
                """
                insert into etl.download (dataset, partition_date, objects) values (%s, %s, %s)
                on conflict (dataset, partition_date) do update
                    set objects = excluded.objects, downloaded_at = now()
                """,
                records,
            )
        how = "read in place from S3" if src.is_s3 else f"landed in {landing_folder(self.dataset)}"
        self.summary = (
            f"found {self.dataset} for {console.span(dates(self))}: {len(sizes)} object(s), "
            f"{sum(sizes.values()) / 1e6:.1f} MB, {how}"
        )


def downloaded(dataset: str, days) -> dict:
    """The SourceObjects of each of a dataset's partitions, as their downloads recorded them."""
    with db.transaction() as conn, conn.cursor() as cur:
        cur.execute(
            "select partition_date, objects from etl.download where dataset = %s and partition_date = any(%s)",
            (dataset, list(days)),
        )
        found = {day: tuple(SourceObject(**obj) for obj in objects) for day, objects in cur.fetchall()}
    missing = sorted(set(days) - set(found))
    if missing:
        # etl.download loses rows only to a forced run (tasks/overwrite.py), which downloads them again
        raise SourceError(
            f"no download recorded for {dataset} {console.span(missing)}: a FORCE=1 run removed it after this"
            " run's download, to download it again; run this command again"
        )
    return found


class DownloadEvents(DownloadDataset):
    """Events of each date: the day's objects (daily layout) or the one file (one-file layout)."""

    dataset = "events"
    arrived = EventsArrived


class DownloadOrganizations(DownloadDataset):
    """The organization list of each date: the current one, or the day's own when orgs_key is daily."""

    dataset = "organizations"
    arrived = OrganizationsArrived
