"""Downloads over the real S3 protocol (moto's server) in both layouts, and atomic local copies."""

import datetime
import gzip
import json
import os
from pathlib import Path

import luigi
import pytest

from tasks import extract
from tasks.load import LoadHistory

from conftest import EVENT_WITH_KEY, query

D1, D2 = datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)


def ndjson(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def event(number, received_at):
    return {"id": f"e{number}", "event_type": "user_created", "user_id": f"u{number}", "received_at": received_at}


def run(task):
    return luigi.build([task], local_scheduler=True, detailed_summary=True, log_level="WARNING")


def test_one_file_layout_from_s3(database_url, s3_bucket, monkeypatch):
    client, bucket = s3_bucket
    client.put_object(
        Bucket=bucket,
        Key="feed/events_sample.json",
        Body=ndjson(
            event(1, "2024-01-01T08:00:00Z"), event(2, "2024-01-02T01:00:00+03:00"), event(3, "2024-01-02T09:00:00Z")
        ),
    )
    client.put_object(Bucket=bucket, Key="feed/orgs_sample.json", Body=ndjson({"organization_key": "o1"}))
    monkeypatch.setenv("ETL_SOURCE_URL", f"s3://{bucket}/feed")
    monkeypatch.setenv("ETL_HISTORY_START", "2024-01-01")

    assert run(LoadHistory(date=D2)).status == luigi.LuigiStatusCode.SUCCESS
    assert query("select date, count(*) from staging.event group by 1 order by 1") == [(D1, 2), (D2, 1)]
    assert query(f"select distinct source_key from {EVENT_WITH_KEY}") == [("events_sample.json",)]


def test_daily_layout_with_gzip_parts_from_s3(database_url, s3_bucket, monkeypatch, settings):
    client, bucket = s3_bucket
    for part, number in ((0, 1), (1, 2)):
        body = gzip.compress(ndjson(event(number, "2024-01-01T10:00:00Z")))
        client.put_object(Bucket=bucket, Key=f"events/date=2024-01-01/part-{part}.json.gz", Body=body)
    client.put_object(Bucket=bucket, Key="orgs.json", Body=ndjson({"organization_key": "o1"}))
    monkeypatch.setenv("ETL_SOURCE_URL", f"s3://{bucket}")
    monkeypatch.setenv("ETL_HISTORY_START", "2024-01-01")
    settings("source", events_key="events/date={date}/", orgs_key="orgs.json")

    # 2024-01-02 has not arrived: the run reports a missing dependency and loads no empty day.
    assert run(LoadHistory(date=D2)).status == luigi.LuigiStatusCode.MISSING_EXT
    assert query(f"select date, source_key from {EVENT_WITH_KEY} order by 2") == [
        (D1, "events/date=2024-01-01/part-0.json.gz"),
        (D1, "events/date=2024-01-01/part-1.json.gz"),
    ]
    client.put_object(
        Bucket=bucket, Key="events/date=2024-01-02/part-0.json", Body=ndjson(event(3, "2024-01-02T10:00:00Z"))
    )
    assert run(LoadHistory(date=D2)).status == luigi.LuigiStatusCode.SUCCESS
    assert query("select date, count(*) from staging.event group by 1 order by 1") == [(D1, 2), (D2, 1)]


def test_a_prefix_of_more_than_a_thousand_objects_is_listed_whole(s3_bucket):
    client, bucket = s3_bucket
    for number in range(1003):
        client.put_object(Bucket=bucket, Key=f"events/date=2024-01-01/part-{number:04d}.json", Body=b"{}\n")
    listed = extract.Source(f"s3://{bucket}").objects("events/date=2024-01-01/")
    assert len(listed) == 1003
    assert (listed[0].key, listed[0].size) == ("events/date=2024-01-01/part-0000.json", 3)


def test_missing_object_has_no_size(s3_bucket):
    _, bucket = s3_bucket
    assert extract.Source(f"s3://{bucket}").objects("nothing.json") == []


def test_a_missing_bucket_is_named_as_such(s3_bucket):
    # a HEAD of a key in a bucket that does not exist is a 404 as for a missing key: "check the key"
    _, bucket = s3_bucket
    with pytest.raises(extract.SourceError, match=f"^bucket '{bucket}x' not found \\(endpoint http://"):
        extract.Source(f"s3://{bucket}x").objects("events.json")


def test_a_short_copy_leaves_no_file(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    (source / "events.json").write_bytes(b"{}\n")
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    with pytest.raises(extract.SourceError, match="expected 10 bytes, copied 3"):
        extract.land(extract.source(), "events", extract.SourceObject("events.json", 10))
    folder = extract.landing_folder("events")
    assert list(folder.iterdir()) == []  # neither the file nor its temporary copy
    landed = extract.land(extract.source(), "events", extract.SourceObject("events.json", 3))
    assert landed.path == str(folder / "events.json") and (folder / "events.json").read_bytes() == b"{}\n"


def test_a_source_file_replaced_by_one_of_the_same_size_lands_again_whatever_its_time(tmp_path, monkeypatch):
    # e.g. a corrected file put back with `cp -p` or `rsync -t`: its time is older than the copy's
    source = tmp_path / "source"
    source.mkdir()
    (source / "events.json").write_bytes(b'{"n":1}\n')
    monkeypatch.setenv("ETL_SOURCE_URL", str(source))
    obj = extract.SourceObject("events.json", 8)
    landed = Path(extract.land(extract.source(), "events", obj).path)
    copied = landed.stat().st_ino
    extract.land(extract.source(), "events", obj)
    assert landed.stat().st_ino == copied  # unchanged: not copied again

    (source / "events.json").write_bytes(b'{"n":2}\n')
    year_2020 = 1_577_836_800 * 10**9
    os.utime(source / "events.json", ns=(year_2020, year_2020))
    extract.land(extract.source(), "events", obj)
    assert landed.read_bytes() == b'{"n":2}\n'
