"""Day tallies of each subject's events, kept by the database itself.

    install()    # the triggers (in a write); `gateway init` and schema step 6 call it
    rebuild()    # every tally counted again from the events (in a write)
    uninstall()  # the triggers gone, for a bulk load that rebuild() then counts

A trigger on `event` adds each inserted row to its tally, takes each deleted row off, and moves
an updated one, in the statement's own transaction. So a tally counts exactly the rows stored,
whoever changed them: collection, a purge, an erasure, a foreign key's cascade or an operator's
SQL. A tally whose count reaches zero is deleted with the last row it counted, so a purge or an
erasure leaves no trace of the events it removed.

SQLite runs its triggers once per row; PostgreSQL's run once per statement over the changed rows
(transition tables), so a purge batch costs one grouped update, not one per row.
"""

from __future__ import annotations

from gateway.store.db import database, serializes_writers

# The tally a row belongs to (its day: days since 1970-01-01), and its milliseconds past
# midnight, in each dialect.
_SQLITE_KEY = "subject_id, database, type, day, sealed, category"
_SQLITE_DAY = "CAST(julianday(date({row}.at)) - 2440587.5 AS INTEGER)"
_SQLITE_MS = "CAST(round((julianday({row}.at) - julianday(date({row}.at))) * 86400000) AS INTEGER)"


def _sqlite_take_off(row: str) -> str:
    match = (
        f"subject_id = {row}.subject_id AND database = {row}.database AND type = {row}.type"
        f" AND day = {_SQLITE_DAY.format(row=row)} AND sealed = {row}.sealed"
        f" AND category = {row}.item_category"
    )
    return (
        f"UPDATE event_tally SET count = count - 1, moment = moment - {_SQLITE_MS.format(row=row)}"
        f" WHERE {match};\n"
        f"  DELETE FROM event_tally WHERE {match} AND count <= 0;"
    )


def _sqlite_add(row: str) -> str:
    return (
        f"INSERT INTO event_tally ({_SQLITE_KEY}, count, moment) VALUES ({row}.subject_id,"
        f" {row}.database, {row}.type, {_SQLITE_DAY.format(row=row)}, {row}.sealed,"
        f" {row}.item_category, 1,"
        f" {_SQLITE_MS.format(row=row)})\n"
        f"  ON CONFLICT ({_SQLITE_KEY})"
        " DO UPDATE SET count = count + 1, moment = moment + excluded.moment;"
    )


SQLITE = [
    f"CREATE TRIGGER IF NOT EXISTS event_tally_insert AFTER INSERT ON event BEGIN\n"
    f"  {_sqlite_add('NEW')}\nEND",
    f"CREATE TRIGGER IF NOT EXISTS event_tally_delete AFTER DELETE ON event BEGIN\n"
    f"  {_sqlite_take_off('OLD')}\nEND",
    "CREATE TRIGGER IF NOT EXISTS event_tally_update"
    " AFTER UPDATE OF subject_id, database, type, at, sealed, item_category ON event BEGIN\n"
    f"  {_sqlite_take_off('OLD')}\n  {_sqlite_add('NEW')}\nEND",
]

# PostgreSQL: one function for the three statement triggers; `removed` and `added` are the
# transition tables of the rows before and after the statement.
_POSTGRES_GROUPED = """
    SELECT subject_id, database, type, at::date - DATE '1970-01-01' AS day, sealed,
           item_category AS category,
           count(*) AS count,
           sum((extract(epoch FROM at - date_trunc('day', at)) * 1000)::bigint) AS moment
    FROM {rows} GROUP BY 1, 2, 3, 4, 5, 6"""
_POSTGRES_MATCH = (
    "t.subject_id = r.subject_id AND t.database = r.database AND t.type = r.type"
    " AND t.day = r.day AND t.sealed = r.sealed AND t.category = r.category"
)
POSTGRES = [
    f"""CREATE OR REPLACE FUNCTION event_tally_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    UPDATE event_tally t SET count = t.count - r.count, moment = t.moment - r.moment
    FROM ({_POSTGRES_GROUPED.format(rows="removed")}) r
    WHERE {_POSTGRES_MATCH};
    DELETE FROM event_tally t USING (SELECT DISTINCT subject_id FROM removed) r
    WHERE t.subject_id = r.subject_id AND t.count <= 0;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO event_tally AS t (subject_id, database, type, day, sealed, category, count, moment)
    {_POSTGRES_GROUPED.format(rows="added")} ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (subject_id, database, type, day, sealed, category)
    DO UPDATE SET count = t.count + excluded.count, moment = t.moment + excluded.moment;
  END IF;
  RETURN NULL;
END $$""",
    "DROP TRIGGER IF EXISTS event_tally_insert ON event",
    "CREATE TRIGGER event_tally_insert AFTER INSERT ON event REFERENCING NEW TABLE AS added"
    " FOR EACH STATEMENT EXECUTE FUNCTION event_tally_sync()",
    "DROP TRIGGER IF EXISTS event_tally_delete ON event",
    "CREATE TRIGGER event_tally_delete AFTER DELETE ON event REFERENCING OLD TABLE AS removed"
    " FOR EACH STATEMENT EXECUTE FUNCTION event_tally_sync()",
    "DROP TRIGGER IF EXISTS event_tally_update ON event",
    "CREATE TRIGGER event_tally_update AFTER UPDATE ON event"
    " REFERENCING OLD TABLE AS removed NEW TABLE AS added"
    " FOR EACH STATEMENT EXECUTE FUNCTION event_tally_sync()",
]

_REBUILD_SQLITE = f"""
    INSERT INTO event_tally ({_SQLITE_KEY}, count, moment)
    SELECT subject_id, database, type, {_SQLITE_DAY.format(row="event")}, sealed, item_category,
           count(*),
           sum({_SQLITE_MS.format(row="event")})
    FROM event GROUP BY 1, 2, 3, 4, 5, 6"""
_REBUILD_POSTGRES = f"""
    INSERT INTO event_tally (subject_id, database, type, day, sealed, category, count, moment)
    {_POSTGRES_GROUPED.format(rows="event")}"""


def install() -> None:
    """Create (or replace) the triggers that keep `event_tally`; call in a write."""
    for statement in SQLITE if serializes_writers() else POSTGRES:
        database.execute_sql(statement)


def uninstall() -> None:
    """Drop the triggers (in a write), for a bulk load that `rebuild` then counts at once: per
    row, they cost a load of millions of events most of its time."""
    on = "" if serializes_writers() else " ON event"
    for trigger in ("insert", "delete", "update"):
        database.execute_sql(f"DROP TRIGGER IF EXISTS event_tally_{trigger}{on}")


def rebuild() -> None:
    """Count every tally again from the stored events; call in a write."""
    database.execute_sql("DELETE FROM event_tally")
    database.execute_sql(_REBUILD_SQLITE if serializes_writers() else _REBUILD_POSTGRES)
