"""The outbox triggers: every inserted Event gets its Outbox row in the same statement, and
loses it with the event.

In the database, not in the services: every write path (the send path's pipelined statement,
record_event, record_events, a migration, a test's ORM call) is covered without being told.
PostgreSQL runs one statement-level trigger per statement over its transition table, so a
batch of sends pays one trigger call, not one per row. SQLite (embedded mode) has row triggers
only. A table rebuild on SQLite (most schema changes to events_event) drops its triggers, so
post_migrate puts them back (apps.events.apps), as apps.messaging.search does for FTS5.
"""

from __future__ import annotations

EVENT_TABLE = "events_event"
OUTBOX_TABLE = "events_outbox"
TRIGGERS = ("events_outbox_add", "events_outbox_remove")
# What the insert trigger writes (the outbox row's retry state starts empty).
_COLUMNS = f"{OUTBOX_TABLE} (event_id, room_id, seq, ts, publish_attempts, last_error)"

_POSTGRESQL = f"""
CREATE OR REPLACE FUNCTION events_outbox_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {_COLUMNS} SELECT id, room_id, seq, ts, 0, '' FROM new_events;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION events_outbox_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {OUTBOX_TABLE} o USING old_events d WHERE o.event_id = d.id;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS events_outbox_add ON {EVENT_TABLE};
CREATE TRIGGER events_outbox_add AFTER INSERT ON {EVENT_TABLE}
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION events_outbox_add();
DROP TRIGGER IF EXISTS events_outbox_remove ON {EVENT_TABLE};
CREATE TRIGGER events_outbox_remove AFTER DELETE ON {EVENT_TABLE}
    REFERENCING OLD TABLE AS old_events FOR EACH STATEMENT
    EXECUTE FUNCTION events_outbox_remove();
"""

_POSTGRESQL_DROP = f"""
DROP TRIGGER IF EXISTS events_outbox_add ON {EVENT_TABLE};
DROP TRIGGER IF EXISTS events_outbox_remove ON {EVENT_TABLE};
DROP FUNCTION IF EXISTS events_outbox_add();
DROP FUNCTION IF EXISTS events_outbox_remove();
"""

_SQLITE = [
    f"""CREATE TRIGGER IF NOT EXISTS events_outbox_add AFTER INSERT ON {EVENT_TABLE} BEGIN
        INSERT INTO {_COLUMNS} VALUES (NEW.id, NEW.room_id, NEW.seq, NEW.ts, 0, '');
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS events_outbox_remove AFTER DELETE ON {EVENT_TABLE} BEGIN
        DELETE FROM {OUTBOX_TABLE} WHERE event_id = OLD.id;
    END""",
]


def installed(connection) -> set[str]:
    """The outbox triggers the database has."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = ANY(%s)",
                [EVENT_TABLE, list(TRIGGERS)],
            )
        else:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s",
                [EVENT_TABLE],
            )
        return {name for (name,) in cursor.fetchall()} & set(TRIGGERS)


def install(connection) -> None:
    """Create the triggers (and, on PostgreSQL, their functions); a no-op where they exist."""
    if set(TRIGGERS) <= installed(connection):
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_POSTGRESQL)
        else:
            for statement in _SQLITE:
                cursor.execute(statement)


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_POSTGRESQL_DROP)
        else:
            for name in TRIGGERS:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
