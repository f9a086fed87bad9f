"""The pipeline's schemas in its PostgreSQL, and what dropping them would take along (`make clean`).

Reads the catalog of the database in use and the dbt project's model names; `drop_pipeline_schemas`
drops the pipeline's six schemas, but refuses while a run is running (runs.refuse_while_running),
or while anything the pipeline did not make would go with them: an object of another schema that
depends on one of them (a view reading `reporting.cohort_summary`), or an object of the user's
inside them (a table in `staging`).
"""

import psycopg2.errors
from psycopg2 import sql

from tasks import config, db, runs, server, staging

DROP_LOCK_SECONDS = 30

PIPELINE_SCHEMAS = ("staging", "historical", "snapshots", "dimensional", "reporting", "etl")
# luigid's task history (tasks/luigid.py keeps it in schema etl) and the pipeline's own records.
ETL_TABLES = (
    "download",
    "build",
    "tested_through",
    "report",
    "outdated_report",
    "run",
    "tasks",
    "task_events",
    "task_parameters",
)


class ForeignObjects(Exception):
    """Dropping the pipeline's schemas would also drop objects the pipeline did not make."""


def _pipeline_names() -> set:
    """(schema, relation) names the pipeline makes: staging declarations, etl tables, dbt nodes."""
    names = {
        tuple(name.split("."))
        for dataset in staging.DATASETS
        for name in (dataset.table.name, dataset.rejected.name, dataset.objects_table, dataset.ledger_table)
    }
    names.add(("staging", "load_id_seq"))
    names.update(("etl", table) for table in ETL_TABLES)
    names.update(("etl", f"{table}_id_seq") for table in ETL_TABLES)
    names.add(("etl", "run_run_id_seq"))
    # user_active_interval's log of changes for active_interval_count (dbt/macros/interval_counts.sql)
    names.add(("reporting", "user_active_interval__count_change"))
    # the history's log of the users a rework touched (dbt/macros/history_changes.sql)
    names.add(("historical", "hist_user_event__reworked_user"))
    project = config.DBT_PROJECT
    for path in list((project / "models").glob("*/*.sql")) + list((project / "snapshots").glob("*.sql")):
        schema = "snapshots" if path.parent.name == "snapshots" else path.parent.name
        names.add((schema, path.stem))
    return names


def existing(cur) -> list:
    cur.execute("select nspname from pg_namespace where nspname = any(%s)", (list(PIPELINE_SCHEMAS),))
    found = {row[0] for row in cur.fetchall()}
    return [schema for schema in PIPELINE_SCHEMAS if schema in found]


def foreign_objects(cur) -> list:
    """What `drop schema … cascade` of the pipeline's schemas would drop that the pipeline did not make."""
    schemas = list(PIPELINE_SCHEMAS)
    # Objects elsewhere that depend on a relation of ours: views (through their rewrite rule),
    # foreign keys, triggers, functions.
    cur.execute(
        """
        select distinct pg_describe_object(dependency.classid, dependency.objid, dependency.objsubid)
        from pg_depend as dependency
        join pg_class as referenced on referenced.oid = dependency.refobjid
            and dependency.refclassid = 'pg_class'::regclass
        join pg_namespace as referenced_schema on referenced_schema.oid = referenced.relnamespace
        left join pg_rewrite as rule on dependency.classid = 'pg_rewrite'::regclass and rule.oid = dependency.objid
        left join pg_class as rule_view on rule_view.oid = rule.ev_class
        left join pg_constraint as constraint_ on dependency.classid = 'pg_constraint'::regclass
            and constraint_.oid = dependency.objid
        left join pg_trigger as trigger_ on dependency.classid = 'pg_trigger'::regclass
            and trigger_.oid = dependency.objid
        left join pg_class as trigger_table on trigger_table.oid = trigger_.tgrelid
        left join pg_proc as function_ on dependency.classid = 'pg_proc'::regclass and function_.oid = dependency.objid
        where referenced_schema.nspname = any(%(schemas)s)
          and dependency.deptype = 'n'
          and coalesce(rule_view.relnamespace, constraint_.connamespace, trigger_table.relnamespace,
                       function_.pronamespace) not in (select oid from pg_namespace where nspname = any(%(schemas)s))
        order by 1
        """,
        {"schemas": schemas},
    )
    found = [row[0] for row in cur.fetchall()]
    # Relations inside our schemas that we did not make (dbt's own temporary relations are ours).
    cur.execute(
        """
        select namespace.nspname, relation.relname, relation.relkind
        from pg_class as relation
        join pg_namespace as namespace on namespace.oid = relation.relnamespace
        where namespace.nspname = any(%s) and relation.relkind in ('r', 'v', 'm', 'S', 'f', 'p')
        order by 1, 2
        """,
        (schemas,),
    )
    ours = _pipeline_names()
    kinds = {"r": "table", "v": "view", "m": "materialized view", "S": "sequence", "f": "foreign table", "p": "table"}
    for schema, name, kind in cur.fetchall():
        base = name.split("__dbt_")[0]
        if (schema, name) not in ours and (schema, base) not in ours:
            found.append(f"{kinds[kind]} {schema}.{name}")
    return found


def drop_pipeline_schemas(dsn: str = None, drop_foreign: bool = False) -> list:
    """Drop the pipeline's schemas; returns the ones dropped. Raises ForeignObjects, dropping
    nothing, when other objects would go with them, unless `drop_foreign`."""
    dsn = dsn or server.database_url()
    with db.transaction(dsn) as conn, conn.cursor() as cur:
        runs.refuse_while_running(cur)
        schemas = existing(cur)
        foreign = foreign_objects(cur) if schemas else []
        if foreign and not drop_foreign:
            raise ForeignObjects(
                f"not dropping the pipeline's schemas in {db.describe(dsn)}: these objects the pipeline did "
                f"not make would go with them: {'; '.join(foreign)}. Move or drop them, or run "
                f"`make clean DROP_FOREIGN=1` to drop them too."
            )
        # A session reading a table (a query, a BI tool) would keep the drop waiting without a word.
        cur.execute("set local lock_timeout = %s", (f"{DROP_LOCK_SECONDS}s",))
        try:
            for schema in schemas:
                cur.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
        except psycopg2.errors.LockNotAvailable:
            raise runs.InProgress(
                f"another session has held a lock on the pipeline's tables for {DROP_LOCK_SECONDS} s (a query,"
                " a tool on the database); nothing was dropped. Let it end, then clean"
            ) from None
    return schemas
