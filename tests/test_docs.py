"""The architecture diagrams of `make docs` (tools/diagrams.py): Mermaid text that shows every task
family and every warehouse node, is identical when regenerated, matches what is committed in
docs/, refreshes the marked blocks of markdown files, and is computed without a database (the task
graph from requires() alone, the layers from `dbt parse`)."""

import datetime
import os
import re
from pathlib import Path

import luigi.configuration
import luigi.task
import psycopg2
import pytest

from tasks import server
from tasks.workflows import Backfill, RebuildReports, RunEtl
from tools import diagrams

DOCS = Path(__file__).resolve().parent.parent / "docs"
NAMES = ("task-graph.mmd", "warehouse-layers.mmd")
# Spelled out so that an empty or partial walk cannot pass by accident.
FAMILIES = {
    "EventsArrived",
    "OrganizationsArrived",
    "DownloadEvents",
    "DownloadOrganizations",
    "LoadEvents",
    "LoadOrganizations",
    "LoadHistory",
    "BuildWarehouse",
    "ExportCohortSummary",
    "DrawCohortHeatmap",
    "RunEtl",
    "Backfill",
    "RebuildReports",
}
WAREHOUSE = {
    "staging.event",
    "staging.event_partition",
    "hist_user_event",
    "hist_user_event_partition",
    "snap_organization",
    "dim_user",
    "fac_user",
    "user_active_interval",
    "cohort_summary",
}
MARKDOWN = """# Title

Text before.

<!-- diagram: task-graph.mmd -->
```mermaid
flowchart TD
    old --> diagram
```

Text between.

```mermaid
flowchart TD
    not --> marked
```

<!-- diagram: warehouse-layers.mmd -->
```mermaid
```
Text after.
"""


def _no_database(*args, **kwargs):
    raise AssertionError("the diagrams must be computed without a database")


@pytest.fixture
def offline(monkeypatch):
    """A guard, not a stand-in: any attempt to reach PostgreSQL fails the test."""
    monkeypatch.setattr(psycopg2, "connect", _no_database)
    monkeypatch.setattr(server, "start_embedded", _no_database)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The CLI's output (with a markdown file to refresh), and a manifest of a second dbt parse."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "page.md").write_text(MARKDOWN)
    (folder / "plain.md").write_text("No marker here.\n```mermaid\nflowchart TD\n```\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg2, "connect", _no_database)
        patch.setattr(server, "start_embedded", _no_database)
        assert (
            diagrams.main(["--out", str(folder), "--into", str(folder / "page.md"), "--into", str(folder / "plain.md")])
            == 0
        )
        manifest = diagrams.dbt_manifest()
    return folder, manifest


def _nodes(text: str) -> dict:
    """{node id: name} of a Mermaid flowchart: the label up to its first line break."""
    return dict(re.findall(r'^ +(\w+)\["([^"<]*)', text, re.MULTILINE))


def _edges(text: str) -> list:
    return re.findall(r"^ +(\w+) --> (\w+)$", text, re.MULTILINE)


def _subgraphs(text: str) -> dict:
    """{subgraph title: [node names]}, in the order the text has them."""
    groups = {}
    for title, body in re.findall(r'^ +subgraph \w+\["([^"]*)"\]\n(.*?)^ +end$', text, re.MULTILINE | re.DOTALL):
        groups[title] = list(_nodes(body).values())
    return groups


def _walk(task, edges, seen):
    if task.task_id not in seen:
        seen.add(task.task_id)
        for required in luigi.task.flatten(task.requires()):
            edges.add((required.task_family, task.task_family))
            _walk(required, edges, seen)


def test_task_graph_shows_every_family_reachable_from_run_etl(generated, settings, offline):
    folder, _ = generated
    # The daily layout, with a history from the previous month: the largest graph.
    settings("etl", history_start="2024-02-27")
    settings("source", events_key="events/date={date}/", orgs_key="orgs/date={date}.json")
    date = datetime.date(2024, 3, 3)
    edges, seen = set(), set()
    for root in (RunEtl(date), Backfill(date, date), RebuildReports([date.isoformat()])):
        _walk(root, edges, seen)
    assert {family for edge in edges for family in edge} == FAMILIES

    text = (folder / "task-graph.mmd").read_text()
    assert text.startswith("flowchart TD\n")
    nodes = _nodes(text)
    assert sorted(nodes.values()) == sorted(FAMILIES)
    # One edge per "family A requires family B", whatever the number of dates.
    drawn = [(nodes[a], nodes[b]) for a, b in _edges(text)]
    assert len(drawn) == len(edges)
    assert set(drawn) == edges
    assert ("LoadEvents", "LoadHistory") in edges and ("RunEtl", "Backfill") in edges
    groups = _subgraphs(text)
    assert list(groups) == sorted(groups)
    extract = ["DownloadEvents", "DownloadOrganizations", "EventsArrived", "OrganizationsArrived"]
    assert groups["tasks.extract"] == extract
    assert groups["tasks.workflows"] == ["Backfill", "RebuildReports", "RunEtl"]
    assert sorted(name for names in groups.values() for name in names) == sorted(FAMILIES)


def test_task_graph_labels_carry_the_docstring(generated):
    folder, _ = generated
    text = (folder / "task-graph.mmd").read_text()
    assert 'Backfill["Backfill<br/>RunEtl for every date from start to date."]' in text
    for label in re.findall(r'\["([^"]*)"\]', text):
        summary = label.partition("<br/>")[2]
        assert len(summary) <= diagrams.LABEL_WIDTH and "`" not in summary, label


def test_labels_escape_mermaid_characters():
    assert diagrams._label("a", 'say "hi" <b> & #1') == "a<br/>say #quot;hi#quot; #lt;b#gt; #amp; #35;1"


def test_warehouse_layers_show_every_source_model_and_snapshot(generated):
    folder, manifest = generated
    names = {key: f"{node['schema']}.{node['name']}" for key, node in manifest["sources"].items()}
    names.update(
        {key: node["name"] for key, node in manifest["nodes"].items() if node["resource_type"] in ("model", "snapshot")}
    )
    assert set(names.values()) >= WAREHOUSE
    text = (folder / "warehouse-layers.mmd").read_text()
    nodes = _nodes(text)
    assert sorted(nodes.values()) == sorted(names.values())
    groups = _subgraphs(text)
    assert list(groups) == ["staging", "historical", "snapshots", "dimensional", "reporting"]
    assert "hist_user_event" in groups["historical"] and "snap_organization" in groups["snapshots"]
    assert "staging.event" in groups["staging"] and "cohort_summary" in groups["reporting"]
    # An edge per depends_on between two drawn nodes; tests and unit tests are not drawn.
    depends = {
        (names[required], names[key])
        for key, node in manifest["nodes"].items()
        if key in names
        for required in node["depends_on"]["nodes"]
        if required in names
    }
    drawn = [(nodes[a], nodes[b]) for a, b in _edges(text)]
    assert len(drawn) == len(depends) and set(drawn) == depends
    assert ("staging.event", "hist_user_event") in depends


def test_regenerating_gives_identical_bytes(generated, settings, monkeypatch, offline):
    folder, manifest = generated
    # Whatever luigi.cfg and the environment say, the walk uses its own settings, then puts them back.
    settings("source", events_key="events.json")
    settings("etl", history_start="2024-03-03")
    monkeypatch.setenv("ETL_HISTORY_START", "2030-01-01")
    assert (folder / "task-graph.mmd").read_bytes() == diagrams.task_graph().encode()
    cfg = luigi.configuration.get_config()
    assert (cfg.get("source", "events_key"), cfg.get("etl", "history_start")) == ("events.json", "2024-03-03")
    assert os.environ["ETL_HISTORY_START"] == "2030-01-01"
    assert (folder / "warehouse-layers.mmd").read_bytes() == diagrams.warehouse_layers(manifest).encode()


def test_committed_diagrams_are_up_to_date(generated):
    folder, _ = generated
    for name in NAMES:
        committed = DOCS / name
        assert committed.is_file(), f"run make docs ({name} is missing)"
        assert committed.read_bytes() == (folder / name).read_bytes(), f"run make docs ({name})"
    # docs/architecture.md carries both diagrams inline, as generated
    architecture = (DOCS / "architecture.md").read_text()
    for name in NAMES:
        assert f"<!-- diagram: {name} -->\n```mermaid\n{(folder / name).read_text()}```" in architecture, name


def test_into_refreshes_marked_blocks_only(generated):
    folder, _ = generated
    page = (folder / "page.md").read_text()
    graph, layers = ((folder / name).read_text() for name in NAMES)
    assert page == MARKDOWN.replace("flowchart TD\n    old --> diagram\n", graph).replace(
        "warehouse-layers.mmd -->\n```mermaid\n", f"warehouse-layers.mmd -->\n```mermaid\n{layers}"
    )
    assert "not --> marked" in page and "old --> diagram" not in page
    assert (folder / "plain.md").read_text() == "No marker here.\n```mermaid\nflowchart TD\n```\n"
    assert diagrams.embed(page, {"task-graph.mmd": graph, "warehouse-layers.mmd": layers}) == page
