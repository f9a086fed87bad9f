"""Forced reprocessing (`FORCE=1`): make date D, and every existing report after it, incomplete again.

Reads and removes completion records: D's download (and that of every earlier date not loaded that
read D's keys) and partition-ledger rows, and the build and report records of D and of every later
date that has a build or a report (each saw partition D); and this machine's report files of those
dates, so that a run that fails leaves no report its records no longer vouch for. Writes those dates
to `etl.outdated_report`, which keeps them after the records are gone: a run that is killed before
it rebuilt them leaves them there for the next. No data is deleted here: the same run reloads D in
one transaction and rebuilds those reports.
"""

from tasks import completion, console, db, export, staging


def invalidate(date) -> tuple:
    """Remove D's completion records and those of later reports; returns (what was done, report
    dates to rebuild in this run, D included)."""
    done = []
    with db.transaction() as conn, conn.cursor() as cur:
        # Committed first: held on, the DDL lock (and a table lock, should an index be made) would
        # wait for the partition locks below with every load and download queued behind it.
        completion.ensure_tables(cur)
        staging.ensure_tables(conn)
    with db.transaction() as conn, conn.cursor() as cur:
        for dataset in staging.DATASETS:
            # With D's download goes that of every earlier date not loaded that read the same keys (a
            # one-file source, a list of organizations; their sizes may differ, the object grew between
            # runs): their loads would read the copy D's download replaces, or, run before it, the old
            # one, and fail again on the object that was fixed.
            # Not later dates: the next day's run may be about to load them. (A run whose download
            # went this way says so, and is run again: extract.downloaded.)
            taken = f"""
                forced.dataset = %(dataset)s and forced.partition_date = %(date)s
                and other.dataset = forced.dataset
                and jsonb_path_query_array(other.objects, '$[*].key')
                    = jsonb_path_query_array(forced.objects, '$[*].key')
                and other.partition_date <= forced.partition_date
                and (other.partition_date = forced.partition_date or not exists (
                    select from {dataset.ledger_table} as loaded where loaded.partition_date = other.partition_date
                ))
            """
            params = {"dataset": dataset.name, "date": date}
            cur.execute(
                f"select other.partition_date from etl.download as other, etl.download as forced where {taken}", params
            )
            params["days"] = sorted({date} | {day for (day,) in cur.fetchall()})
            # The loads' lock: a load that read one of these downloads commits before this, or finds
            # the download gone and commits nothing (load._commit), so its old rows never pass for new.
            for day in params["days"]:
                db.lock_partition(cur, dataset.table.name, day)
            cur.execute(
                "delete from etl.download as other using etl.download as forced"
                f" where {taken} and other.partition_date = any(%(days)s) returning other.partition_date",
                params,
            )
            with_it = sorted(day for (day,) in cur.fetchall() if day != date)
            if with_it:
                again = console.span(with_it)
                done.append(f"{dataset.name} of {again} will be downloaded again with it (not loaded, same keys)")
            cur.execute(f"delete from {dataset.ledger_table} where partition_date = %s returning 1", (date,))
            if cur.fetchall():
                done.append(f"{dataset.table.name} {date} will be reloaded from the source")
        # a build whose reports are not exported yet counts too: it read partition D; and so does a
        # report an earlier forced run outdated and did not live to rebuild
        cur.execute(
            "select run_date from etl.report where run_date >= %(date)s"
            " union select run_date from etl.build where run_date >= %(date)s"
            " union select run_date from etl.outdated_report where run_date >= %(date)s order by 1",
            {"date": date},
        )
        outdated = [row[0] for row in cur.fetchall()]
        later = [day for day in outdated if day > date]
        cur.execute(
            "insert into etl.outdated_report (run_date) select unnest(%s::date[]) on conflict do nothing", (outdated,)
        )
        cur.execute("delete from etl.build where run_date >= %s", (date,))
        cur.execute("delete from etl.report where run_date >= %s", (date,))
    for ledger in [completion.DOWNLOADS, completion.BUILDS, completion.REPORTS] + [d.ledger for d in staging.DATASETS]:
        ledger.forget()
    if later:
        done.append(f"reports after {date} will be rebuilt too: {', '.join(map(str, later))}")
    removed = set()
    for day in [date] + later:
        for kind in export.KINDS:
            path = export.report_path(day, kind)
            if path.exists():
                path.unlink()
                removed.add(day)
    if removed:
        done.append(
            f"removed the old report files of {', '.join(map(str, sorted(removed)))} from"
            f" {export.report_path(date).parent} until this run writes them again"
        )
    return done, [date] + later


def outdated_reports() -> list:
    """The report dates a reload outdated and no export has written again since, in order."""
    with db.transaction() as conn, conn.cursor() as cur:
        if not db.exists(cur, "etl.outdated_report"):
            return []
        cur.execute("select run_date from etl.outdated_report order by 1")
        return [row[0] for row in cur.fetchall()]
