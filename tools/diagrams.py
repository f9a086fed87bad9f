"""Architecture diagrams as Mermaid text, computed from the code: the Luigi task graph and dbt's layers.

Reads the Luigi task classes (walking requires() from `RunEtl(D)`, `Backfill` and `RebuildReports`)
and dbt's `manifest.json`, which `dbt parse` writes into a temporary folder. Neither needs a
database: the walk never asks a task whether it is complete, and dbt parse never connects. Writes
`<out>/task-graph.mmd` and `<out>/warehouse-layers.mmd`, and in each markdown file given with
`--into` replaces the ```mermaid block right under a line `<!-- diagram: task-graph.mmd -->` (or
`warehouse-layers.mmd`) with the current text. GitHub and GitLab render Mermaid as it is; dbt's
documentation site (`dbt docs generate`, which needs the database) keeps the full lineage.

    python -m tools.diagrams [--out docs] [--into docs/architecture.md ...]

The text depends on the code only, so regenerating it gives the same bytes.
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import luigi

from tasks.config import DBT_PROJECT
from tasks.transform import DBT
from tasks.workflows import Backfill, RebuildReports, RunEtl

# The walk needs a date; a fixed one keeps the text independent of today and of luigi.cfg.
GRAPH_DATE = datetime.date(2024, 3, 3)
# The larger of the layouts: daily events and organization lists add EventsArrived and
# OrganizationsArrived, and a history that starts in the previous month adds the LoadHistory of
# that month's end (tasks/load.py).
GRAPH_SETTINGS = {
    ("source", "events_key"): "events/date={date}/",
    ("source", "orgs_key"): "orgs/date={date}.json",
    ("etl", "history_start"): "2024-02-28",
}
LAYERS = ("staging", "historical", "snapshots", "dimensional", "reporting")
LABEL_WIDTH = 60
# Mermaid reads these inside a quoted label; its entity codes show them as they are.
ESCAPES = str.maketrans({"#": "#35;", '"': "#quot;", "&": "#amp;", "<": "#lt;", ">": "#gt;"})
MARKER = re.compile(r"^(<!-- diagram: ([\w.-]+) -->\n```mermaid\n).*?^```$", re.MULTILINE | re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Mermaid text


def _short(text: str) -> str:
    """Plain text on one line, cut on a word boundary so the box stays narrow."""
    return textwrap.shorten(text.replace("`", ""), LABEL_WIDTH, placeholder="…")


def _label(name: str, summary: str) -> str:
    summary = _short(summary)
    return name.translate(ESCAPES) + (f"<br/>{summary.translate(ESCAPES)}" if summary else "")


def _node_id(text: str) -> str:
    return re.sub(r"\W+", "_", text)


def flowchart(comment: str, groups: list, edges) -> str:
    """A top-down flowchart: groups is [(subgraph title, {node id: label})], edges {(from, to)}."""
    lines = ["flowchart TD", f"%% {comment}"]
    for title, nodes in groups:
        lines.append(f'    subgraph {_node_id(title)}["{title.translate(ESCAPES)}"]')
        lines += [f'        {node}["{label}"]' for node, label in sorted(nodes.items())]
        lines.append("    end")
    lines += [f"    {required} --> {user}" for required, user in sorted(edges)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The Luigi task graph


@contextlib.contextmanager
def _settings(values: dict):
    """luigi.cfg values for the walk, in this process; the previous ones are put back afterwards."""
    cfg = luigi.configuration.get_config()
    saved = {key: cfg.get(*key, raw=True) if cfg.has_option(*key) else None for key in values}
    # ETL_HISTORY_START wins over [etl] history_start (tasks.config), so it steps aside meanwhile.
    history_start = os.environ.pop("ETL_HISTORY_START", None)
    try:
        for (section, option), value in values.items():
            if not cfg.has_section(section):
                cfg.add_section(section)
            cfg.set(section, option, value)
        yield
    finally:
        for (section, option), value in saved.items():
            if value is None:
                cfg.remove_option(section, option)
            else:
                cfg.set(section, option, value)
        if history_start is not None:
            os.environ["ETL_HISTORY_START"] = history_start


def walk(roots) -> tuple:
    """({family: class}, {(required family, requiring family)}) of every task reachable from `roots`.

    Only requires() is called: complete() is where a task asks the database.
    """
    classes, edges, seen, todo = {}, set(), set(), list(roots)
    while todo:
        task = todo.pop()
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        classes[task.task_family] = type(task)
        for required in luigi.task.flatten(task.requires()):
            edges.add((required.task_family, task.task_family))
            todo.append(required)
    return classes, edges


def task_graph() -> str:
    """Task families reachable from RunEtl(D) and the wrappers around it, by defining module."""
    roots = [RunEtl(GRAPH_DATE), Backfill(GRAPH_DATE, GRAPH_DATE), RebuildReports([GRAPH_DATE.isoformat()])]
    with _settings(GRAPH_SETTINGS):
        classes, edges = walk(roots)
    modules = {}
    for family, cls in classes.items():
        first_line = (cls.__doc__ or "").strip().split("\n")[0]
        modules.setdefault(cls.__module__, {})[family] = _label(family, first_line)
    return flowchart(
        "Luigi task families; A --> B: B requires A. Generated by make docs (python -m tools.diagrams).",
        sorted(modules.items()),
        edges,
    )


# ---------------------------------------------------------------------------------------------
# The dbt layers


def dbt_manifest() -> dict:
    """dbt's manifest from `dbt parse`, run in a temporary folder so that nothing is left behind."""
    with tempfile.TemporaryDirectory(prefix="diagrams-dbt-") as folder:
        command = [
            DBT,
            "parse",
            "--project-dir",
            str(DBT_PROJECT),
            "--profiles-dir",
            str(DBT_PROJECT),
            "--target-path",
            folder,
            "--log-path",
            folder,
        ]
        env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"dbt parse failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))


def _first_sentence(description: str) -> str:
    return re.split(r"(?<=\.)\s", " ".join(description.replace("**", "").split()), maxsplit=1)[0]


def _layer_order(schema: str) -> tuple:
    # Known layers in pipeline order; a schema this list does not know still shows, last.
    return (LAYERS.index(schema) if schema in LAYERS else len(LAYERS), schema)


def warehouse_layers(manifest: dict) -> str:
    """Sources, models and snapshots by schema, an edge per depends_on between them."""
    models = {key: node for key, node in manifest["nodes"].items() if node["resource_type"] in ("model", "snapshot")}
    names = {key: f"{node['schema']}.{node['name']}" for key, node in manifest["sources"].items()}
    names.update({key: node["name"] for key, node in models.items()})
    nodes = {**manifest["sources"], **models}
    ids = {key: _node_id(f"{nodes[key]['resource_type']} {name}") for key, name in names.items()}
    schemas = {}
    for key, node in nodes.items():
        schemas.setdefault(node["schema"], {})[ids[key]] = _label(names[key], _first_sentence(node["description"]))
    # Sources depend on nothing; tests and unit tests are not in `ids`, so they are left out.
    edges = {
        (ids[required], ids[key])
        for key, node in models.items()
        for required in node["depends_on"]["nodes"]
        if required in ids
    }
    return flowchart(
        "dbt sources, models and snapshots by schema; A --> B: B is built from A. "
        "Generated by make docs (python -m tools.diagrams).",
        [(schema, schemas[schema]) for schema in sorted(schemas, key=_layer_order)],
        edges,
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def embed(markdown: str, diagrams: dict) -> str:
    """`markdown` with the ```mermaid block under each `<!-- diagram: NAME -->` line set to diagrams[NAME]."""

    def replace(match):
        text = diagrams.get(match[2])
        return match[0] if text is None else f"{match[1]}{text}```"

    return MARKER.sub(replace, markdown)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.diagrams", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder of the .mmd files (default docs)")
    parser.add_argument(
        "--into",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="markdown file whose marked ```mermaid blocks are refreshed (repeatable)",
    )
    args = parser.parse_args(argv)
    diagrams = {"task-graph.mmd": task_graph(), "warehouse-layers.mmd": warehouse_layers(dbt_manifest())}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in diagrams.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    for path in args.into:
        markdown = path.read_text(encoding="utf-8")
        refreshed = embed(markdown, diagrams)
        if refreshed != markdown:
            path.write_text(refreshed, encoding="utf-8")
            print(f"refreshed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
