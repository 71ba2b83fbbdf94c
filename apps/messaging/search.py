"""Message search (PROTOCOL §8): PostgreSQL full-text search, SQLite FTS5 in embedded mode.

Both index only what a message shows: a deletion (and so every redaction: the author's,
a moderator's, an erasure's) blanks the body, which empties the PostgreSQL generated column
in the same UPDATE and rewrites the FTS5 row in the same transaction (its trigger); the
retention purge deletes rows, and their index entries with them. The query applies the one
read rule (`readable_condition`, the rule of `Room.objects.readable_by`) and skips deleted
messages and those below their room's history_start (past retention, not yet purged).

Query syntax is PostgreSQL's `websearch_to_tsquery` on both: words (all must match),
"quoted phrases", `or` between alternatives, `-word` to exclude. On SQLite it is translated
to an FTS5 expression (`fts5_expression`) in which every word is a quoted string, so no
input is an FTS5 syntax error.

Both see a body the same way: PostgreSQL's parser skips what looks like an HTML tag or entity
(`<b>`, `</b>`, `&amp;`), so "zebra crossing" matches "<b>zebra</b> crossing"; the FTS5 table
holds the body with those replaced by a space (`search_text`, an SQL function every SQLite
connection gets, which the triggers call), as ts_headline shows the body.

Highlights: an HTML fragment of the body, escaped, with the matches in <mark>…</mark>. The
database marks matches with U+0002/U+0003, characters a body can never hold
(apps.core.text refuses control characters), and only then is the text escaped.
"""

from __future__ import annotations

import html
import re
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, F, TextField
from django.db.models.expressions import RawSQL

from apps.core.errors import invalid
from apps.core.text import check_text
from apps.rooms.managers import readable_condition

from .models import Message

FTS_TABLE = "messaging_message_fts"
SEARCH_TEXT_FUNCTION = "chat_search_text"
PG_INDEX = "message_search_vector"
# The GIN index's pending list (fastupdate), in kB: new entries wait there until it is this
# big and the INSERT that overflows it merges them into the index, in its own transaction. At
# PostgreSQL's default (4 MB) that merge held a send batch for 150-230 ms once every ~30,000
# messages, which at 2,500 sends/s put a few hundred acks past 100 ms (bench/RESULTS.md, 3
# December); at 256 kB each merge is a sixteenth of that, and searches scan a shorter list.
# fastupdate off did as well at 2,500/s but made the big batches of 3,000/s slower.
PG_PENDING_LIST_KB = 256
NO_PARALLEL_WORKERS = "SET LOCAL max_parallel_workers_per_gather = 0"
MARK_START, MARK_STOP = "\x02", "\x03"
_CONFIG_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# --- The index ------------------------------------------------------------------------------


def search_config() -> str:
    """settings.SEARCH_CONFIG, checked to be a plain identifier (it is spliced into DDL)."""
    config = settings.SEARCH_CONFIG
    if not _CONFIG_NAME.match(config):
        raise ValueError(f"SEARCH_CONFIG {config!r} is not a text search configuration name")
    return config


def set_pending_list_limit(conn, *, reset: bool = False) -> None:
    """The pending list's limit on an index made before it was set (migration 0009), or,
    with `reset`, the server's default again (0009 reversed)."""
    if conn.vendor == "postgresql":
        change = (
            "RESET (gin_pending_list_limit)"
            if reset
            else f"SET (gin_pending_list_limit = {PG_PENDING_LIST_KB})"
        )
        with conn.cursor() as cursor:
            cursor.execute(f"ALTER INDEX IF EXISTS {PG_INDEX} {change}")


def create_index(conn) -> None:
    """The migration's DDL on `conn` (see migrations/0007_search_index)."""
    table = Message._meta.db_table
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            config = search_config()
            cursor.execute("SELECT 1 FROM pg_ts_config WHERE cfgname = %s", [config])
            if cursor.fetchone() is None:
                raise ValueError(f"SEARCH_CONFIG {config!r}: no such text search configuration")
            cursor.execute(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS search_vector tsvector "
                f"GENERATED ALWAYS AS (to_tsvector('{config}'::regconfig, body)) STORED"
            )
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON {table} USING gin (search_vector) "
                f"WITH (gin_pending_list_limit = {PG_PENDING_LIST_KB})"
            )
        elif conn.vendor == "sqlite":
            # Its own copy of the text (not external content): the indexed text is
            # search_text(body), and snippet() must read the text that was indexed.
            cursor.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(body, "
                "tokenize='unicode61 remove_diacritics 2')"
            )
    if conn.vendor == "sqlite":
        ensure_sqlite_index(conn)


def drop_index(conn) -> None:
    table = Message._meta.db_table
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS search_vector")
        elif conn.vendor == "sqlite":
            for name in _SQLITE_TRIGGERS:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            cursor.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")


_SQLITE_TRIGGERS = {
    f"{FTS_TABLE}_ai": "AFTER INSERT ON {t} BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, body) VALUES (new.id, {SEARCH_TEXT_FUNCTION}(new.body)); END",
    f"{FTS_TABLE}_ad": f"AFTER DELETE ON {{t}} BEGIN DELETE FROM {FTS_TABLE} WHERE rowid = old.id; END",
    f"{FTS_TABLE}_au": "AFTER UPDATE OF body ON {t} BEGIN "
    f"DELETE FROM {FTS_TABLE} WHERE rowid = old.id; "
    f"INSERT INTO {FTS_TABLE}(rowid, body) VALUES (new.id, {SEARCH_TEXT_FUNCTION}(new.body)); END",
}

# What PostgreSQL's default parser takes for a tag (`<b>`, `</a>`, `<br/>`, `<!-- … -->`) or an
# entity (`&amp;`, `&#39;`) and leaves out of the vector and the headline.
_MARKUP = re.compile(
    r"<!--.*?-->|<[/?!]?[A-Za-z][^<>]*>|&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);",
    re.S,
)


def search_text(body) -> str:
    """The text FTS5 indexes and highlights: the body with tags and entities replaced by a
    space, as PostgreSQL's parser and ts_headline treat them."""
    return _MARKUP.sub(" ", body or "")


def register_sqlite_functions(sender=None, connection=None, **kwargs) -> None:
    """connection_created: give every SQLite connection search_text, which the triggers call
    (a write to messages on a connection without it fails: use Django's connections)."""
    if connection is not None and connection.vendor == "sqlite":
        connection.connection.create_function(
            SEARCH_TEXT_FUNCTION, 1, search_text, deterministic=True
        )


def rebuild_sqlite_index(conn) -> None:
    """Fill the FTS5 table again from every message."""
    with conn.cursor() as cursor:
        cursor.execute(f"DELETE FROM {FTS_TABLE}")
        cursor.execute(
            f"INSERT INTO {FTS_TABLE}(rowid, body) "
            f"SELECT id, {SEARCH_TEXT_FUNCTION}(body) FROM {Message._meta.db_table}"
        )


def ensure_sqlite_index(conn) -> bool:
    """SQLite: (re)create the FTS5 triggers that are missing, and rebuild the index if any
    was (Django's SQLite schema editor rebuilds a table to alter it, dropping its triggers).
    Nothing before the FTS5 table exists. Whether the index was rebuilt."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT type, name FROM sqlite_master WHERE name = %s OR "
            "(type = 'trigger' AND name LIKE %s)",
            [FTS_TABLE, f"{FTS_TABLE}_%"],
        )
        found = {name for _, name in cursor.fetchall()}
        if FTS_TABLE not in found:
            return False
        missing = [name for name in _SQLITE_TRIGGERS if name not in found]
        for name in missing:
            body = _SQLITE_TRIGGERS[name].format(t=Message._meta.db_table)
            cursor.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
    if missing:
        rebuild_sqlite_index(conn)
    return bool(missing)


# --- Queries --------------------------------------------------------------------------------


def clean_query(q) -> str:
    """The `q` parameter: 1 to SEARCH_QUERY_MAX_LENGTH characters with something visible,
    no control characters (a NUL byte included)."""
    if not isinstance(q, str) or not q.strip():
        raise invalid("q is required")
    if len(q) > settings.SEARCH_QUERY_MAX_LENGTH:
        raise invalid(f"q is longer than {settings.SEARCH_QUERY_MAX_LENGTH} characters")
    check_text(q, "q", multiline=False)
    return q


_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w+")


def fts5_expression(q: str) -> str | None:
    """websearch_to_tsquery's syntax as an FTS5 expression, with its precedence: `or`
    separates alternatives, each all of its words and phrases but its `-excluded` ones
    (`a b or c -d` is (a AND b) OR (c NOT d)). None when nothing can match (no word in it;
    an alternative of exclusions only is dropped: FTS5 has no unary NOT). Every word and
    phrase is an FTS5 string, so no input is an FTS5 syntax error."""
    branches: list[tuple[list[str], list[str]]] = [([], [])]
    for match in _TOKEN.finditer(q):
        negate, phrase, word = match.group(1), match.group(2), match.group(3)
        if word is not None:
            if word.lower() == "or":
                branches.append(([], []))
                continue
            negate = "-" if word.startswith("-") else ""
            phrase = word.lstrip("-")
        words = _WORD.findall(phrase)
        if words:
            branches[-1][1 if negate else 0].append('"' + " ".join(words) + '"')
    alternatives = [
        "(" + " AND ".join(included) + ")" + "".join(f" NOT {term}" for term in excluded)
        for included, excluded in branches
        if included
    ]
    if not alternatives:
        return None
    return (
        alternatives[0] if len(alternatives) == 1 else " OR ".join(f"({a})" for a in alternatives)
    )


_MARKED = re.compile(f"{MARK_START}(.*?){MARK_STOP}", re.S)
_TOKEN_CHARS = re.compile(r"[^\W_]+")  # unicode61's tokens: letters and digits


def marks_per_word(marked: str) -> str:
    """FTS5's snippet marks a matched phrase as one span, the text between its words (spaces,
    punctuation, what looks like markup) included; ts_headline marks each word. Mark each
    word, as PostgreSQL does."""
    return _MARKED.sub(
        lambda span: _TOKEN_CHARS.sub(
            lambda word: MARK_START + word.group() + MARK_STOP, span.group(1)
        ),
        marked,
    )


def highlight_html(marked: str) -> str:
    """Escape the database's fragment and turn its markers into <mark> elements."""
    text = html.escape(marked, quote=True)
    return text.replace(MARK_START, "<mark>").replace(MARK_STOP, "</mark>")


class Page(NamedTuple):
    messages: list  # Message objects, each with a `highlight`
    more: bool


def search_messages(
    user,
    q: str,
    *,
    room_id=None,
    author_id=None,
    before=None,
    limit: int = 20,
    prepare=lambda queryset: queryset,
) -> Page:
    """The caller's readable, live messages matching q, newest first (by id), `before` a
    message id (the cursor). `prepare` adds what the caller needs (select/prefetch)."""
    q = clean_query(q)
    messages = Message.objects.filter(
        readable_condition(user, "room"),
        deleted_at__isnull=True,
        seq__gte=F("room__history_start"),
    )
    if room_id is not None:
        messages = messages.filter(room_id=room_id)
    if author_id is not None:
        messages = messages.filter(author_id=author_id)
    if before is not None:
        messages = messages.filter(pk__lt=before)
    table = Message._meta.db_table
    if connection.vendor == "postgresql":
        config = search_config()
        query = "websearch_to_tsquery(%s::regconfig, %s)"
        # The page's ids first (the index, the read rule, the cursor: a rare word's every
        # match is checked and sorted), then its rows: the author join, the prefetches and
        # ts_headline run for the page only. Unqualified: in the subquery Django renames the
        # table, and no other table there has a search_vector.
        matching = messages.filter(
            RawSQL(f"search_vector @@ {query}", [config, q], output_field=BooleanField())
        )
        ids = matching.order_by("-pk").values("pk")[: limit + 1]
        rows = Message.objects.filter(pk__in=ids).annotate(
            highlight=RawSQL(
                f"ts_headline(%s::regconfig, {table}.body, {query}, %s)",
                [
                    config,
                    config,
                    q,
                    (f"StartSel={MARK_START}, StopSel={MARK_STOP}, MaxWords=35, MinWords=15"),
                ],
                output_field=TextField(),
            )
        )
        with transaction.atomic():
            # A page of 20 is not worth parallel workers: launching them costs more than the
            # whole serial query (the planner picks them for a medium word's long walk).
            with connection.cursor() as cursor:
                cursor.execute(NO_PARALLEL_WORKERS)
            page = list(prepare(rows.order_by("-pk")))
    else:
        expression = fts5_expression(q)
        if expression is None:
            return Page([], False)
        messages = messages.filter(
            pk__in=RawSQL(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s", [expression])
        )
        page = list(prepare(messages.order_by("-pk"))[: limit + 1])
        _sqlite_highlights(page[:limit], expression)
    more, page = len(page) > limit, page[:limit]
    for message in page:
        message.highlight = highlight_html(message.highlight)
    return Page(page, more)


def _sqlite_highlights(messages, expression: str) -> None:
    if not messages:
        return
    ids = [m.pk for m in messages]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT rowid, snippet({FTS_TABLE}, 0, char(2), char(3), '…', 32) FROM {FTS_TABLE} "
            f"WHERE {FTS_TABLE} MATCH %s AND rowid IN ({', '.join(['%s'] * len(ids))})",
            [expression, *ids],
        )
        found = dict(cursor.fetchall())
    for message in messages:
        message.highlight = marks_per_word(found.get(message.pk, message.body))
