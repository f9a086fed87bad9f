"""Architecture diagrams as SVG, computed from the code, and dbt's documentation site.

Reads the Luigi task classes (walking `RunEtl(D).requires()` and `Backfill`, without a database)
and dbt's `manifest.json` (from `dbt parse`, which needs no database either); writes
`<out>/task-graph.svg`, `<out>/warehouse-layers.svg` and the manifest under
`<out>/generated/dbt/`. With `--dbt-docs` it runs `dbt docs generate` against the pipeline's
database into `<out>/generated/dbt/` instead.

    python -m tasks.diagrams [--out docs]      # the two diagrams
    python -m tasks.diagrams --dbt-docs        # dbt's documentation site

The SVG writer below is deliberately tiny (layered layout, boxes, arrows) and deterministic: the
same code gives the same bytes, so the committed diagrams only change when the code does.
"""

import argparse
import contextlib
import datetime
import itertools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from xml.sax.saxutils import escape

import luigi

from tasks import config, database, transform
from tasks.export import Backfill, RunEtl

# The walk needs dates; fixed ones keep the output independent of today and of luigi.cfg. Two
# days of history are enough to show every family and keep the walk small.
GRAPH_DATE = datetime.date(2024, 1, 3)
GRAPH_START = GRAPH_DATE - datetime.timedelta(days=2)
# The two source layouts (contract section 2): the daily one adds EventsArrived to the graph.
ONE_FILE_KEY, DAILY_KEY = "events.json", "events/date={date}/"
LAYERS = ("staging", "historical", "snapshots", "dimensional", "reporting")


# ---------------------------------------------------------------------------------------------
# The Luigi task graph


@contextlib.contextmanager
def _offline(events_key: str):
    """Settings for the walk, and no database: requires() must be answerable from the code alone."""

    def no_database(*args, **kwargs):
        raise RuntimeError("the task graph must be computed without a database")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(config, "history_start", lambda: GRAPH_START))
        stack.enter_context(mock.patch.object(config, "events_key", lambda: events_key))
        # LoadHistory.requires() leaves out dates already loaded, which it asks etl.marker for.
        # The diagram shows a fresh warehouse (nothing loaded); anything else that queries fails.
        stack.enter_context(mock.patch.object(database, "marked_dates", lambda target, dates: set()))
        stack.enter_context(mock.patch.object(database, "database_url", no_database))
        stack.enter_context(mock.patch.object(database, "connect", no_database))
        yield


def walk(roots) -> tuple:
    """Every task reachable from `roots` by requires(): ({family: class}, {(required, requirer)})."""
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


def task_graph() -> tuple:
    """({family: class}, [(required, requirer, dashed)]) over both source layouts.

    An edge only the daily layout has is dashed.
    """
    found = {}
    for key in (ONE_FILE_KEY, DAILY_KEY):
        with _offline(key):
            found[key] = walk([RunEtl(GRAPH_DATE), Backfill(GRAPH_START, GRAPH_DATE)])
    classes = {**found[ONE_FILE_KEY][0], **found[DAILY_KEY][0]}
    always = found[ONE_FILE_KEY][1]
    edges = sorted((a, b, (a, b) not in always) for a, b in always | found[DAILY_KEY][1])
    return classes, edges


def _summary(cls) -> list:
    """The first line of the class docstring, wrapped, when it is short enough for a box."""
    doc = (cls.__doc__ or "").strip()
    lines = textwrap.wrap(doc.splitlines()[0].replace("`", ""), 50, break_on_hyphens=False) if doc else []
    return lines if len(lines) <= 2 else []


def _task_kind(cls) -> str:
    if issubclass(cls, luigi.ExternalTask):
        return "external"
    return "wrapper" if issubclass(cls, luigi.WrapperTask) else "task"


def task_diagram() -> "Diagram":
    classes, edges = task_graph()
    # Rows by distance from the end of the chain, so every row only needs the rows above it.
    users = {}
    for a, b, _ in edges:
        users.setdefault(a, []).append(b)
    distance = {}

    def to_end(family):
        if family not in distance:
            distance[family] = 1 + max((to_end(user) for user in users.get(family, ())), default=-1)
        return distance[family]

    top = max(to_end(family) for family in classes)
    boxes = [
        Box(family, family, _summary(cls), _task_kind(cls), top - to_end(family))
        for family, cls in sorted(classes.items())
    ]
    return Diagram(
        title="Luigi task graph: RunEtl(D) and Backfill, one box per task family",
        boxes=boxes,
        edges=edges,
        across=False,
        legend=[
            ("task", "task: writes its output()"),
            ("wrapper", "wrapper task: only requires others"),
            ("external", "external task: waits for data written by someone else"),
            (None, "An arrow A \u2192 B: B requires A, so B runs once A is complete."),
            (None, "Dashed: only with the daily source layout ([source] events_key containing {date})."),
        ],
    )


# ---------------------------------------------------------------------------------------------
# The dbt layers


def dbt_parse(target_path: Path) -> Path:
    """Run `dbt parse` into `target_path`; returns the manifest. No database is contacted."""
    # profiles.yml requires its variables even to parse; dbt parse never connects, so any URL will do.
    env = transform.dbt_environment("postgresql://dbt@parse-only.invalid/dbt")
    command = transform.dbt_command(["parse"], target_path)
    done = subprocess.run(command, cwd=transform.DBT_PROJECT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dbt parse failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return Path(target_path) / "manifest.json"


def warehouse_diagram(manifest: dict) -> "Diagram":
    """A band per layer (schema), a box per source, model and snapshot, an arrow per depends_on."""
    layer, boxes = {}, {}
    for key, node in manifest["sources"].items():
        layer[key] = "sources"
        boxes[key] = Box(key, f"{node['schema']}.{node['name']}", ["source"], "source")
    for key, node in manifest["nodes"].items():
        if node["resource_type"] in ("model", "snapshot"):
            layer[key] = node["schema"]
            boxes[key] = Box(key, node["name"], [node["config"]["materialized"]], node["resource_type"])
    edges = sorted(
        (required, key, False)
        for key, node in manifest["nodes"].items()
        if key in boxes
        for required in node["depends_on"]["nodes"]
        if required in boxes
    )
    # Known layers in pipeline order; a schema this list does not know still gets its band, last.
    order = ["sources", *LAYERS] + sorted(set(layer.values()) - {"sources", *LAYERS})
    bands, offset = [], 0
    for name in order:
        members = {key for key in boxes if layer[key] == name}
        if not members:
            continue
        label = name
        if name == "sources":  # staging, and etl for the markers: known layers first
            schemas = {boxes[key].title.split(".")[0] for key in members}
            label = "sources: " + ", ".join(sorted(schemas, key=lambda schema: (schema not in LAYERS, schema)))
        # Within a layer a model may select from another (fac_user from dim_user): sub-columns.
        inner = {}

        def depth(key):
            if key not in inner:
                inner[key] = 1 + max((depth(a) for a, b, _ in edges if b == key and a in members), default=-1)
            return inner[key]

        for key in members:
            boxes[key].rank = offset + depth(key)
        last = offset + max(inner.values())
        bands.append((label, offset, last))
        offset = last + 1
    return Diagram(
        title="Warehouse layers: dbt sources, models and snapshots by schema",
        boxes=sorted(boxes.values(), key=lambda box: box.title),
        edges=edges,
        across=True,
        bands=bands,
        legend=[
            ("source", "source: a table Luigi writes, dbt reads"),
            ("model", "model (materialization)"),
            ("snapshot", "snapshot"),
            (None, "An arrow A \u2192 B: B is built from A (depends_on in dbt's manifest.json)."),
        ],
    )


# ---------------------------------------------------------------------------------------------
# A tiny SVG writer: layered layout, boxes, arrows


@dataclass
class Box:
    key: str
    title: str
    lines: list  # smaller text under the title
    kind: str  # picks the colours, see STYLE
    rank: int = 0  # column (across) or row (down); every arrow goes to a higher rank


@dataclass
class Diagram:
    title: str
    boxes: list
    edges: list  # (from key, to key, dashed)
    across: bool  # True: ranks are columns, left to right; False: rows, top to bottom
    bands: list = field(default_factory=list)  # (label, first rank, last rank), shaded behind
    legend: list = field(default_factory=list)  # (kind or None, text)


FONT = "Helvetica, Arial, 'Liberation Sans', sans-serif"
TITLE_SIZE, TEXT_SIZE, LINE = 13, 11, 15
PAD, RANK_GAP, ITEM_GAP, BAND_PAD, MARGIN = 10, 64, 22, 14, 24
STYLE = {  # kind: (fill, stroke)
    "task": ("#e8f0fe", "#3b6fd4"),
    "wrapper": ("#f3f4f6", "#6b7280"),
    "external": ("#fff4e0", "#d08a1c"),
    "source": ("#fff4e0", "#d08a1c"),
    "model": ("#e8f0fe", "#3b6fd4"),
    "snapshot": ("#eaf6ec", "#3c9a52"),
}


def _width(text: str, size: float) -> float:
    # No font metrics without a renderer: 0.55 em per character is wide enough for common sans fonts.
    return len(text) * size * 0.55


def _n(value: float) -> str:
    """Coordinates with one decimal at most, written the same way every time."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _crossings(ranks: dict, after: dict) -> int:
    """How many pairs of arrows cross between neighbouring ranks."""
    where = {item: i for items in ranks.values() for i, item in enumerate(items)}
    pairs = [(where[a], where[b]) for items in ranks.values() for a in items for b in after.get(a, ())]
    return sum((a1 - a2) * (b1 - b2) < 0 for (a1, b1), (a2, b2) in itertools.combinations(pairs, 2))


def _order(ranks: dict, before: dict, after: dict) -> dict:
    """Order each rank to avoid crossings: barycentre sweeps, keep the best, then swap neighbours."""
    best, fewest = {rank: list(items) for rank, items in ranks.items()}, _crossings(ranks, after)
    for _ in range(6):
        for sequence, neighbours in ((sorted(ranks), before), (sorted(ranks, reverse=True), after)):
            for rank in sequence:
                where = {item: i for items in ranks.values() for i, item in enumerate(items)}

                def centre(item):
                    near = [where[other] for other in neighbours.get(item, ())]
                    return sum(near) / len(near) if near else where[item]

                ranks[rank].sort(key=centre)  # stable: ties keep their order, so output is fixed
            if _crossings(ranks, after) < fewest:
                best, fewest = {rank: list(items) for rank, items in ranks.items()}, _crossings(ranks, after)
    improved = True
    while improved:
        improved = False
        for items in best.values():
            for i in range(len(items) - 1):
                items[i], items[i + 1] = items[i + 1], items[i]
                if _crossings(best, after) < fewest:
                    fewest, improved = _crossings(best, after), True
                else:
                    items[i], items[i + 1] = items[i + 1], items[i]
    return best


def _place(ranks: dict, size, before: dict, after: dict) -> dict:
    """Offsets across the ranks: each item near the mean of its neighbours, in order, never closer
    than ITEM_GAP. Straight runs of arrows come out straight."""
    v = {}
    for items in ranks.values():
        at = 0.0
        for item in items:
            v[item] = at
            at += size(item) + ITEM_GAP

    def centre(item):
        return v[item] + size(item) / 2

    for round_ in range(12):
        neighbours = before if round_ % 2 == 0 else after
        for rank in sorted(ranks, reverse=round_ % 2 == 1):
            items = ranks[rank]
            want = []
            for item in items:
                near = [centre(other) for other in neighbours.get(item, ())]
                want.append(sum(near) / len(near) - size(item) / 2 if near else v[item])
            # Two feasible packings, one pushing down and one pushing up; their mean is feasible too.
            down, up = list(want), list(want)
            for i in range(1, len(items)):
                down[i] = max(down[i], down[i - 1] + size(items[i - 1]) + ITEM_GAP)
            for i in range(len(items) - 2, -1, -1):
                up[i] = min(up[i], up[i + 1] - size(items[i]) - ITEM_GAP)
            for item, a, b in zip(items, down, up):
                v[item] = (a + b) / 2
    low = min(v.values())
    return {item: at - low for item, at in v.items()}


def render(diagram: Diagram) -> str:
    boxes = {box.key: box for box in diagram.boxes}
    lines = max(len(box.lines) for box in diagram.boxes)
    box_w = PAD * 2 + max(
        max([_width(box.title, TITLE_SIZE * 1.05)] + [_width(line, TEXT_SIZE) for line in box.lines])
        for box in diagram.boxes
    )
    box_w = 10 * -(-box_w // 10)
    box_h = PAD * 2 + TITLE_SIZE + lines * LINE + 2
    depth, breadth = (box_w, box_h) if diagram.across else (box_h, box_w)  # along / across the ranks

    # An arrow spanning several ranks passes through each one in a slot of its own (a "dummy"),
    # so that it never crosses a box.
    ranks = {}
    for box in diagram.boxes:
        ranks.setdefault(box.rank, []).append(box.key)
    chains, before, after = [], {}, {}
    for a, b, dashed in diagram.edges:
        if boxes[b].rank <= boxes[a].rank:
            raise ValueError(f"{a} -> {b} does not go forward in rank")
        chain = [a] + [f"{a}>{b}@{rank}" for rank in range(boxes[a].rank + 1, boxes[b].rank)] + [b]
        for dummy in chain[1:-1]:
            ranks.setdefault(int(dummy.rsplit("@", 1)[1]), []).append(dummy)
        for one, two in zip(chain, chain[1:]):
            after.setdefault(one, []).append(two)
            before.setdefault(two, []).append(one)
        chains.append((chain, dashed))
    ranks = _order(ranks, before, after)

    def size(item):
        return breadth if item in boxes else 0

    # Positions: u along the ranks, v across them.
    head = MARGIN + 30 + (LINE + BAND_PAD if diagram.bands else 0)
    v_start = head if diagram.across else MARGIN + BAND_PAD
    u_start = MARGIN + BAND_PAD if diagram.across else head
    rank_gap = RANK_GAP if diagram.across else RANK_GAP * 0.6  # rows need less room to curve than columns
    v = {item: v_start + at for item, at in _place(ranks, size, before, after).items()}
    u = {item: u_start + rank * (depth + rank_gap) for rank, items in ranks.items() for item in items}
    widest = max(v[item] + size(item) for item in v) - v_start

    def xy(pu, pv):
        return (pu, pv) if diagram.across else (pv, pu)

    # Ports: the arrows leaving (or entering) a box are spread along its side in the order of
    # where they go (or come from), so they do not cross at the box.
    ports = {}
    for side, neighbours in (("out", after), ("in", before)):
        for key, others in neighbours.items():
            if key in boxes:
                others = sorted(others, key=lambda other: v[other] + size(other) / 2)
                for i, other in enumerate(others):
                    ports[(side, key, other)] = v[key] + breadth * (i + 1) / (len(others) + 1)

    out = []
    out.append(f'<text class="heading" x="{MARGIN}" y="{MARGIN + 14}">{escape(diagram.title)}</text>')
    last_u = max(u.values()) + depth + BAND_PAD
    last_v = v_start + widest
    for label, first, last in diagram.bands:
        u0 = u_start + first * (depth + rank_gap) - BAND_PAD
        u1 = u_start + last * (depth + rank_gap) + depth + BAND_PAD
        x0, y0 = xy(u0, head - LINE - BAND_PAD)
        x1, y1 = xy(u1, last_v + BAND_PAD)
        out.append(f'<rect class="band" x="{_n(x0)}" y="{_n(y0)}" width="{_n(x1 - x0)}" '
                   f'height="{_n(y1 - y0)}" rx="8"/>')
        out.append(f'<text class="band-label" x="{_n(x0 + 10)}" y="{_n(y0 + LINE + 3)}">{escape(label)}</text>')

    for chain, dashed in chains:
        points = [(u[chain[0]] + depth, ports[("out", chain[0], chain[1])])]
        for dummy in chain[1:-1]:  # straight through the rank, then a curve to the next one
            points += [(u[dummy], v[dummy]), (u[dummy] + depth, v[dummy])]
        points.append((u[chain[-1]], ports[("in", chain[-1], chain[-2])]))
        d = "M{},{}".format(*map(_n, xy(*points[0])))
        for (u0, v0), (u1, v1) in zip(points, points[1:]):
            bend = (u1 - u0) / 2
            d += " C{},{} {},{} {},{}".format(*map(_n, (*xy(u0 + bend, v0), *xy(u1 - bend, v1), *xy(u1, v1))))
        out.append(f'<path class="edge{" dashed" if dashed else ""}" d="{d}" marker-end="url(#arrow)"/>')

    for box in diagram.boxes:
        x, y = xy(u[box.key], v[box.key])
        fill, stroke = STYLE[box.kind]
        out.append(f'<g><rect x="{_n(x)}" y="{_n(y)}" width="{_n(box_w)}" height="{_n(box_h)}" rx="6" '
                   f'fill="{fill}" stroke="{stroke}"/>')
        # The text block is centred vertically, so boxes with fewer lines look balanced too.
        top = y + (box_h - TITLE_SIZE - len(box.lines) * LINE) / 2 + TITLE_SIZE - 2
        out.append(f'<text class="name" x="{_n(x + box_w / 2)}" y="{_n(top)}">{escape(box.title)}</text>')
        for i, line in enumerate(box.lines):
            out.append(f'<text class="note" x="{_n(x + box_w / 2)}" y="{_n(top + (i + 1) * LINE)}">'
                       f'{escape(line)}</text>')
        out.append("</g>")

    right, bottom = xy(last_u, last_v + BAND_PAD)
    y = bottom + 12
    legend_width = 0
    for kind, text in diagram.legend:
        y += LINE + 3
        x = MARGIN
        if kind:
            fill, stroke = STYLE[kind]
            out.append(f'<rect x="{x}" y="{_n(y - 10)}" width="18" height="12" rx="3" '
                       f'fill="{fill}" stroke="{stroke}"/>')
            x += 26
        out.append(f'<text class="legend" x="{x}" y="{_n(y)}">{escape(text)}</text>')
        legend_width = max(legend_width, x + _width(text, TEXT_SIZE))
    width = max(right, legend_width, MARGIN + _width(diagram.title, 15)) + MARGIN
    height = y + MARGIN
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" font-family="{FONT}">',
        f"<title>{escape(diagram.title)}</title>",
        "<style>",
        "  .heading { font-size: 15px; font-weight: bold; fill: #111827; }",
        f"  .name {{ font-size: {TITLE_SIZE}px; font-weight: bold; fill: #111827; text-anchor: middle; }}",
        f"  .note {{ font-size: {TEXT_SIZE}px; fill: #374151; text-anchor: middle; }}",
        f"  .legend {{ font-size: {TEXT_SIZE}px; fill: #374151; }}",
        "  .band { fill: #f7f7f9; stroke: #d1d5db; }",
        "  .band-label { font-size: 12px; font-weight: bold; fill: #6b7280; }",
        "  .edge { fill: none; stroke: #4b5563; stroke-width: 1.3; }",
        "  .dashed { stroke-dasharray: 5 4; }",
        "</style>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#4b5563"/></marker></defs>',
        f'<rect width="{_n(width)}" height="{_n(height)}" fill="#ffffff"/>',
        *out,
        "</svg>",
        "",
    ])


# ---------------------------------------------------------------------------------------------
# Entry points


def write_diagrams(out: Path, manifest: Path) -> list:
    """Write both diagrams into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, diagram in (
        ("task-graph.svg", task_diagram()),
        ("warehouse-layers.svg", warehouse_diagram(json.loads(manifest.read_text()))),
    ):
        path = out / name
        path.write_text(render(diagram), encoding="utf-8")
        written.append(path)
    return written


def dbt_docs(target_path: Path) -> int:
    """`dbt docs generate` against the pipeline's database (started on demand, as for a run).

    Returns dbt's exit code; dbt prints its own progress and errors.
    """
    # Compiling needs a valid run date; which one does not matter for the documentation.
    command = transform.dbt_command(["docs", "generate", "--static"], target_path, config.history_start())
    env = transform.dbt_environment(database.database_url())
    return subprocess.run(command, cwd=transform.DBT_PROJECT, env=env).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.diagrams", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder of the diagrams (default docs)")
    parser.add_argument("--dbt-docs", action="store_true", help="run dbt docs generate instead (needs the database)")
    args = parser.parse_args(argv)
    target = (args.out / "generated" / "dbt").resolve()
    if args.dbt_docs:
        code = dbt_docs(target)
        if code != 0:
            print(f"error: dbt docs generate failed (exit {code})", file=sys.stderr)
            return code
        shown = os.path.relpath(target)
        if not json.loads((target / "catalog.json").read_text())["nodes"]:
            print("note: the catalog is empty (no column types) until a run has built the warehouse")
        print(f"dbt docs: {shown}/static_index.html (one file, opens offline in a browser)")
        print(f"      or: dbt docs serve --project-dir dbt --profiles-dir dbt --target-path {shown}")
        return 0
    for path in write_diagrams(args.out, dbt_parse(target)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
