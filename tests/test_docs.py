"""The architecture diagrams of `make docs`: complete, valid SVG, identical when regenerated, and
computed without a database (the task graph from the code, the layers from `dbt parse`)."""

import datetime
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import luigi.task
import psycopg2
import pytest

from tasks import database, diagrams
from tasks.export import Backfill, RunEtl

SVG = "{http://www.w3.org/2000/svg}"
# Spelled out so that an empty walk cannot pass by accident.
FAMILIES = {
    "EventsArrived", "DownloadEvents", "DownloadOrganizations", "LoadEvents", "LoadOrganizations",
    "LoadStaging", "LoadHistory", "RunDbt", "ExportCohortSummary", "DrawCohortHeatmap", "RunEtl",
}


def _no_database(*args, **kwargs):
    raise AssertionError("the diagrams must be generated without a database")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The CLI's output, and the same diagrams written a second time from its manifest."""
    folder = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ETL_DATA_DIR", str(folder / "work"))
        patch.setattr(psycopg2, "connect", _no_database)
        patch.setattr(database, "start_embedded", _no_database)
        assert diagrams.main(["--out", str(folder / "one")]) == 0
        manifest = folder / "one" / "generated" / "dbt" / "manifest.json"
        diagrams.write_diagrams(folder / "two", manifest)
    return folder, json.loads(manifest.read_text())


def _names(path) -> list:
    """The box titles of a diagram, parsing it as XML."""
    root = ET.parse(path).getroot()
    return [text.text for text in root.iter(f"{SVG}text") if text.get("class") == "name"]


def _walk(task, edges, seen):
    if task.task_id not in seen:
        seen.add(task.task_id)
        for required in luigi.task.flatten(task.requires()):
            edges.add((required.task_family, task.task_family))
            _walk(required, edges, seen)


def test_task_graph_shows_every_family_reachable_from_run_etl(generated, settings, monkeypatch):
    folder, _ = generated
    # The daily layout is the larger graph; nothing is loaded, so LoadHistory asks for every date.
    settings("etl", history_start="2024-03-01")
    settings("source", events_key="events/date={date}/")
    monkeypatch.setattr(database, "marked_dates", lambda target, dates: set())
    monkeypatch.setattr(psycopg2, "connect", _no_database)
    monkeypatch.setattr(database, "start_embedded", _no_database)
    edges, seen = set(), set()
    _walk(RunEtl(datetime.date(2024, 3, 3)), edges, seen)
    families = {family for edge in edges for family in edge}
    assert FAMILIES <= families

    names = _names(folder / "one" / "task-graph.svg")
    assert sorted(names) == sorted(families | {Backfill.task_family})
    # One arrow per "family A requires family B", whatever the number of dates.
    root = ET.parse(folder / "one" / "task-graph.svg").getroot()
    arrows = [path for path in root.iter(f"{SVG}path") if "edge" in path.get("class", "")]
    assert len(arrows) == len(edges | {(RunEtl.task_family, Backfill.task_family)})


def test_warehouse_layers_show_every_source_model_and_snapshot(generated):
    folder, manifest = generated
    expected = [f"{node['schema']}.{node['name']}" for node in manifest["sources"].values()] + [
        node["name"] for node in manifest["nodes"].values() if node["resource_type"] in ("model", "snapshot")
    ]
    assert {"staging.event", "staging.organization", "hist_user_event", "snap_organization"} <= set(expected)
    assert sorted(_names(folder / "one" / "warehouse-layers.svg")) == sorted(expected)
    root = ET.parse(folder / "one" / "warehouse-layers.svg").getroot()
    bands = [text.text for text in root.iter(f"{SVG}text") if text.get("class") == "band-label"]
    assert bands == ["sources: staging, etl", "historical", "snapshots", "dimensional", "reporting"]


def test_regenerating_gives_identical_bytes(generated):
    folder, _ = generated
    for name in ("task-graph.svg", "warehouse-layers.svg"):
        assert (folder / "one" / name).read_bytes() == (folder / "two" / name).read_bytes()


def test_boxes_do_not_overlap(generated):
    folder, _ = generated
    for name in ("task-graph.svg", "warehouse-layers.svg"):
        root = ET.parse(folder / "one" / name).getroot()
        boxes = [
            [float(rect.get(key)) for key in ("x", "y", "width", "height")]
            for group in root.iter(f"{SVG}g") for rect in group.iter(f"{SVG}rect")
        ]
        assert len(boxes) >= 6
        for (x1, y1, w1, h1), (x2, y2, w2, h2) in itertools.combinations(boxes, 2):
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, name


def test_committed_diagrams_are_up_to_date(generated):
    folder, _ = generated
    committed = Path(__file__).resolve().parent.parent / "docs"
    for name in ("task-graph.svg", "warehouse-layers.svg"):
        assert (committed / name).read_bytes() == (folder / "one" / name).read_bytes(), f"run make docs ({name})"
