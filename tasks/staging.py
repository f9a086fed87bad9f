"""The staging tables, each declared once: its columns (name, type, and where a row's value comes
from), from which come the DDL, the COPY column list and the COPY row; its rejected-lines table; its
source objects (each partition's object keys, numbered); and its partition ledger, the load's
completion record that dbt reads as a source.

Rows are written in COPY's binary format: nothing to escape, and the server stores dates, numbers
and timestamps without parsing text (a fifth less of its time per row than the text format).

Reads the catalog; `ensure_tables` writes the DDL of the `staging` schema (and upgrades in place a
table an older version made), `summarize_date_indexes` the summaries of its date indexes.
"""

import datetime
import struct
from dataclasses import dataclass, field

from psycopg2 import sql

from tasks import completion, db, records

# COPY's binary format (PostgreSQL's COPY reference, "Binary Format"): a signature, flags and a
# header extension length before the rows; a field count of -1 after them.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


def copy_data(rows):
    """A binary COPY's whole data: the header, the chunks of rows, the trailer."""
    yield COPY_HEADER
    yield from rows
    yield COPY_TRAILER


@dataclass(frozen=True)
class Origin:
    """What every row of one COPY shares: partition, source object (its key, and its number among
    the partition's objects in key order), load."""

    date: datetime.date
    key: str
    load_id: int
    object_number: int


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    value: str  # Python expression of the value, over `line` (a records.Line) or `origin` (an Origin)


# How each type is written in COPY's binary format. Each field is its length (int32) and its bytes;
# fixed-size values are packed with struct: (format, arguments: the length and the value's expression).
_FIXED = {
    "integer": ("ii", "4, {}"),
    "bigint": ("iq", "8, {}"),
    "timestamptz": ("iq", "8, {}"),  # microseconds since 2000-01-01 UTC (records.Line.instant)
    "date": ("ii", "4, ({} - _DAY_ZERO).days"),  # days since 2000-01-01
}
# Variable-size values: (format and arguments of what precedes the bytes, the bytes' expression).
_VARIABLE = {
    "text": ("i", "len({0})", "{}.encode()"),
    "bytea": ("i", "len({0})", "{}"),
    "jsonb": ("ib", "len({0}) + 1, 1", "{}"),  # jsonb's binary form: version 1, then the JSON text
}


def _compile(columns) -> str:
    """Python source of `bind(origin)`, which returns `row(line)`: a line's row, as bytes.

    Compiled once per table from its columns, so that a row costs a few C calls (one struct per run
    of lengths and fixed-size values) instead of a Python call per column. Origin columns are
    written once per COPY, in bind()."""
    outer, inner, parts = [], [], []  # bind()'s statements, row()'s statements, the row's parts
    constants, fmt, args = [repr(struct.pack(">h", len(columns)))], [], []  # the pending run of each kind

    def end_constants():
        if constants:
            outer.append(f"k{len(parts)} = {' + '.join(constants)}")
            parts.append(f"k{len(parts)}")
            constants.clear()

    def end_struct():
        if fmt:
            outer.append(f"p{len(parts)} = _struct({''.join(fmt)!r})")
            parts.append(f"p{len(parts)}({', '.join(args)})")
            fmt.clear()
            args.clear()

    for number, column in enumerate(columns):
        per_line = not column.value.startswith("origin.")
        if column.type in _FIXED:
            code, values = _FIXED[column.type]
            if per_line:
                end_constants()
                fmt.append(code)
                args.append(values.format(column.value))
                continue
            encoded = f"_struct({code!r})({values.format(column.value)})"
        else:
            code, head, value = _VARIABLE[column.type]
            name = f"v{number}"
            if per_line:
                end_constants()
                inner.append(f"{name} = {value.format(column.value)}")
                fmt.append(code)
                args.append(head.format(name))
                end_struct()
                parts.append(name)
                continue
            outer.append(f"{name} = {value.format(column.value)}")
            encoded = f"_struct({code!r})({head.format(name)}) + {name}"
        end_struct()
        constants.append(encoded)
    end_struct()
    end_constants()
    return "\n".join(
        ["def bind(origin):"]
        + [f"    {line}" for line in outer]
        + ["    def row(line):"]
        + [f"        {line}" for line in inner]
        + [f"        return b''.join(({', '.join(parts)},))", "    return row"]
    )


# Text compares byte by byte (the "C" collation), whatever the server's default: source keys sort
# in S3's order and ids in one order on every server, and the history's sorts and indexes on ids,
# which inherit it, skip the locale's comparison (half the time of a sort of 1M ids on C.UTF-8).
_COLLATE = {"text": ' collate "C"'}


def _struct(fmt: str):
    return struct.Struct(">" + fmt).pack


# A dataset's table is loaded, and read by the history, one date at a time. Its rows stay in load
# order, so that a BRIN index on date finds a date's rows in the pages that hold them: reading a
# date, or deleting it before a load, costs that date's pages, not the whole table's.
# - No vacuum after inserts alone. It records each page's last free bytes in the free space map,
#   and the next COPY puts its smaller rows there: at day 30 of 200k events a day, one day's rows
#   were spread over nearly every page, and a date's delete and read each scanned all 2 GB. The
#   vacuum after deletes (a reload) and the rare one against transaction id wraparound still run:
#   the load after such a vacuum fills the space it recorded, scattered bytes included, and the
#   loads after that append again. A table made before this setting keeps its own (runbook.md,
#   "Upgrade staging made before it kept load order").
# - A page range without a summary is read by every query. Autovacuum summarises each range once
#   it is full (autosummarize), in the background; each build summarises the rest before dbt reads
#   staging (summarize_date_indexes). A load of one date does not: it would read back the pages it
#   just wrote, a quarter more time for a load of 1M rows. A load of many dates summarises as it
#   goes, since each date's delete would otherwise read all the dates before (load._DateIndex).
_IN_LOAD_ORDER = " with (autovacuum_vacuum_insert_threshold = -1)"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple
    in_load_order: bool = False  # kept in load order, its date index a BRIN one (_IN_LOAD_ORDER); else a B-tree
    bind: object = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        namespace = {"_struct": _struct, "_DAY_ZERO": datetime.date(2000, 1, 1)}
        exec(_compile(self.columns), namespace)  # our own declarations, compiled once (as dataclasses does)
        object.__setattr__(self, "bind", namespace["bind"])

    def ddl(self) -> str:
        body = ",\n    ".join(
            f"{column.name} {column.type}{_COLLATE.get(column.type, '')} not null" for column in self.columns
        )
        options = _IN_LOAD_ORDER if self.in_load_order else ""
        return f"create table if not exists {self.name} (\n    {body}\n){options};\n"

    def date_index_ddl(self) -> str:
        index = self.date_index.split(".")[1]  # created in the table's schema
        if self.in_load_order:
            return f"create index {index} on {self.name} using brin (date) with (autosummarize = on)"
        return f"create index {index} on {self.name} (date)"

    @property
    def date_index(self) -> str:
        return f"{self.name}_date_idx"

    def copy_statement(self) -> sql.Composed:
        return sql.SQL("copy {} ({}) from stdin (format binary)").format(
            sql.Identifier(*self.name.split(".")), sql.SQL(", ").join(sql.Identifier(c.name) for c in self.columns)
        )

    def row(self, line, origin: Origin) -> bytes:
        """One line's row in COPY's binary format (the loader binds once per origin instead)."""
        return self.bind(origin)(line)


# Columns every staging table starts with: where a row came from. A row names its source object by
# number; the partition's source objects table holds the key once. Keys are long in real buckets
# (`events/date=2024-01-01/part-0000.json` is 38 bytes), and a key per row made the server's part
# of a 1M-event load a tenth slower (docs/performance-notes.md, "Source keys once per object").
PARTITION = Column("date", "date", "origin.date")
LINE_NUMBER = Column("line_number", "integer", "line.number")
PROVENANCE = (PARTITION, Column("object_number", "integer", "origin.object_number"), LINE_NUMBER)
LOAD_ID = Column("load_id", "bigint", "origin.load_id")
JSON_CONTENT = Column("json_content", "jsonb", "line.raw")


def _rejected(table: str) -> Table:
    # Rejects keep their key: they are few, and read by people, not joined.
    return Table(
        f"{table}_rejected",
        (PARTITION, Column("source_key", "text", "origin.key"), LINE_NUMBER)
        + (
            Column("raw_line", "bytea", "line.raw"),
            Column("reason", "text", "line.reason"),
            LOAD_ID,
        ),
    )


@dataclass(frozen=True)
class Dataset:
    """A staging dataset: its table, rejected lines, partition ledger and line rules."""

    name: str  # as downloads call it
    table: Table
    required: tuple  # required string fields of a record (contract section 3)
    unique_field: str | None = None  # a second line with the same value in one partition is a reject
    rejected: Table = field(init=False)
    ledger: completion.Ledger = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "rejected", _rejected(self.table.name))
        object.__setattr__(self, "ledger", completion.Ledger(self.ledger_table))

    @property
    def dated(self) -> bool:
        """Lines carry received_at, so a one-file object is routed to partitions by their day."""
        return "received_at" in self.required

    @property
    def ledger_table(self) -> str:
        return f"{self.table.name}_partition"

    @property
    def objects_table(self) -> str:
        return f"{self.table.name}_source_object"

    def objects_ddl(self) -> str:
        # The source objects of each loaded partition, numbered from 0 in key order (byte order, as
        # the "C" collation sorts): a partition's rows ordered by (object_number, line_number) are
        # in the order of (source_key, line_number). Replaced with the partition's rows.
        return f"""
create table if not exists {self.objects_table} (
    date date not null,
    object_number integer not null,
    source_key text collate "C" not null,
    primary key (date, object_number)
);
"""

    def ledger_ddl(self) -> str:
        # One row per loaded partition: the load's completion record, and dbt's source of which
        # partitions exist and which load of each is current (a reload gets a new, larger load_id).
        return f"""
create table if not exists {self.ledger_table} (
    partition_date date primary key,
    load_id bigint not null,
    lines_read bigint not null,
    row_count bigint not null,
    reject_count bigint not null,
    loaded_at timestamptz not null default now()
);
"""


EVENTS = Dataset(
    "events",
    Table(
        "staging.event",
        PROVENANCE
        + (
            Column("event_id", "text", 'line.record["id"]'),
            Column("received_at", "timestamptz", "line.instant"),
            JSON_CONTENT,
            LOAD_ID,
        ),
        in_load_order=True,
    ),
    records.EVENT_REQUIRED,
)
ORGANIZATIONS = Dataset(
    "organizations",
    Table(
        "staging.organization",
        PROVENANCE
        + (
            Column("organization_key", "text", 'line.record["organization_key"]'),
            JSON_CONTENT,
            LOAD_ID,
        ),
        in_load_order=True,
    ),
    records.ORGANIZATION_REQUIRED,
    unique_field="organization_key",
)
DATASETS = (EVENTS, ORGANIZATIONS)
TABLES = tuple(table for dataset in DATASETS for table in (dataset.table, dataset.rejected))

DDL = "create schema if not exists staging;\ncreate sequence if not exists staging.load_id_seq;\n" + "".join(
    dataset.table.ddl() + dataset.rejected.ddl() + dataset.objects_ddl() + dataset.ledger_ddl() for dataset in DATASETS
)


def summarize_date_indexes(cur) -> None:
    """Summarise each date index over the pages not summarised yet (_IN_LOAD_ORDER); the build calls
    it before dbt reads staging. Needs the tables' owner (the pipeline, which made them). Its lock
    (share update exclusive, for the call only) lets loads and reads go on."""
    for table in TABLES:
        if table.in_load_order:
            summarize_date_index(cur, table)


def summarize_date_index(cur, table: Table) -> None:
    """Summarise the BRIN date index of a table kept in load order over its pages not summarised yet."""
    # to_regclass: null, and nothing to do, before the first load made the table
    cur.execute("select brin_summarize_new_values(to_regclass(%s))", (table.date_index,))


def ensure_tables(conn) -> None:
    """Create the staging schema, its tables, date indexes and ledgers when missing, and upgrade
    tables an older version made (serialised: concurrent DDL collides)."""
    with conn.cursor() as cur:
        db.lock(cur, "etl.ddl")
        cur.execute(DDL)
        for dataset in DATASETS:
            _number_source_objects(cur, dataset)
        for table in TABLES:
            # Only when missing: `create index if not exists` takes its share lock before it looks,
            # so it would wait for every load of the table still open, and each load runs this.
            # (An index dropped by hand is made again here, waiting for open loads; one of another
            # shape under the same name is kept.)
            if not db.exists(cur, table.date_index):
                cur.execute(table.date_index_ddl())


def _number_source_objects(cur, dataset: Dataset) -> None:
    """Upgrade a table made before rows named their source object by number: its keys go to the
    objects table, each row gets its object's number, and the key column goes. Once, in the DDL's
    transaction; it rewrites the table (runbook.md, "Upgrade staging made before source objects").
    The table is locked first, so that no load of the old version adds keys after they were read."""
    schema, table = dataset.table.name.split(".")
    cur.execute(
        "select from information_schema.columns where table_schema = %s and table_name = %s and column_name = %s",
        (schema, table, "source_key"),
    )
    if cur.fetchone() is None:
        return
    cur.execute(f"""
lock table {dataset.table.name} in access exclusive mode;
delete from {dataset.objects_table};
insert into {dataset.objects_table} (date, object_number, source_key)
select date, row_number() over (partition by date order by source_key collate "C") - 1, source_key
from (select distinct date, source_key from {dataset.table.name}) as source_object;
alter table {dataset.table.name} add column if not exists object_number integer;
update {dataset.table.name} as staged
set object_number = source_object.object_number
from {dataset.objects_table} as source_object
where source_object.date = staged.date and source_object.source_key = staged.source_key collate "C";
alter table {dataset.table.name} alter column object_number set not null, drop column source_key;
""")
