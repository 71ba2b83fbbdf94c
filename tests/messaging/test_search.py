"""Message search (PROTOCOL §8) and `around=`, on the database the run uses: PostgreSQL full-text
search with the services, SQLite FTS5 with CHAT_EMBEDDED=1 (run the file both ways)."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.messaging import search, services
from apps.messaging.models import Message
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.services import postgresql_only

pytestmark = pytest.mark.django_db


def find(client, **params):
    response = client.get("/api/search/", params)
    assert response.status_code == 200, response.content
    return response.json()


def bodies(page):
    return [hit["message"]["body"] for hit in page["results"]]


@pytest.fixture
def as_user(user):
    return factories.api_client(user)


def test_words_match_newest_first_with_the_hit_shape_and_highlight(room, user, as_user):
    factories.send(room, user, "the deploy went fine")
    factories.send(room, user, "lunch at noon")
    last = factories.send(room, user, "Deploy <b>again</b> tomorrow & later")
    page = find(as_user, q="deploy")
    assert bodies(page) == ["Deploy <b>again</b> tomorrow & later", "the deploy went fine"]
    hit = page["results"][0]
    assert hit["room"] == room.pk and hit["seq"] == last.seq
    assert hit["message"]["id"] == last.envelope["data"]["id"]
    assert set(hit["message"]) >= {"id", "room", "seq", "author", "body", "thread", "reply_count"}
    # The body is escaped; only the match is marked up. (Both databases leave what looks like
    # an HTML tag out of the fragment, as PostgreSQL's parser does.)
    assert "<mark>Deploy</mark>" in hit["highlight"] and "&amp;" in hit["highlight"]
    assert "<b>" not in hit["highlight"] and "again" in hit["highlight"]
    assert page["next"] is None


def test_all_words_must_match_phrases_or_and_exclusion(room, user, as_user):
    for body in ["red apple pie", "apple red wine", "green apple", "blue sky", "red sky"]:
        factories.send(room, user, body)
    assert set(bodies(find(as_user, q="red apple"))) == {"red apple pie", "apple red wine"}
    assert bodies(find(as_user, q='"red apple"')) == ["red apple pie"]
    assert set(bodies(find(as_user, q="green or blue"))) == {"green apple", "blue sky"}
    assert set(bodies(find(as_user, q="green apple or red sky"))) == {"green apple", "red sky"}
    assert set(bodies(find(as_user, q="apple -red"))) == {"green apple"}
    assert bodies(find(as_user, q="nothing-like-this")) == []
    assert bodies(find(as_user, q='"unclosed phrase')) == []
    assert bodies(find(as_user, q="!!! ---")) == []  # no word: nothing, not an error


def test_filters_room_author_and_the_cursor(user, other_user, as_user):
    a = factories.make_room(user)
    b = factories.make_room(user)
    rooms.room_join(room=a, user=other_user)
    factories.send(a, user, "budget one")
    factories.send(a, other_user, "budget two")
    factories.send(b, user, "budget three")
    assert bodies(find(as_user, q="budget", room=a.pk)) == ["budget two", "budget one"]
    assert bodies(find(as_user, q="budget", author=other_user.pk)) == ["budget two"]
    assert bodies(find(as_user, q="budget", author=other_user.username)) == ["budget two"]
    assert bodies(find(as_user, q="budget", author="nobody-by-that-name")) == []
    first = find(as_user, q="budget", limit=2)
    assert bodies(first) == ["budget three", "budget two"] and first["next"]
    second = as_user.get(first["next"]).json()
    assert bodies(second) == ["budget one"] and second["next"] is None


def test_private_rooms_are_never_found_by_outsiders(user, other_user):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE)
    public = factories.make_room(user)
    factories.send(private, user, "secret plan")
    factories.send(public, user, "public plan")
    outsider = factories.api_client(other_user)
    assert bodies(find(outsider, q="plan")) == ["public plan"]
    assert bodies(find(outsider, q="secret")) == []
    assert bodies(find(outsider, q="plan", room=private.pk)) == []
    assert bodies(find(factories.api_client(user), q="plan")) == ["public plan", "secret plan"]
    # A site moderator reads every room, so finds it too.
    assert bodies(find(factories.api_client(factories.make_moderator()), q="secret")) == [
        "secret plan"
    ]


def test_a_banned_user_and_a_former_member_find_nothing_there(user, other_user):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    public = factories.make_room(user)
    rooms.room_join(room=public, user=other_user)
    factories.send(private, user, "quarterly numbers")
    factories.send(public, user, "quarterly party")
    client = factories.api_client(other_user)
    assert len(find(client, q="quarterly")["results"]) == 2
    rooms.member_ban(room=public, actor=user, user=other_user, reason="spam")
    assert bodies(find(client, q="quarterly")) == ["quarterly numbers"]
    rooms.room_leave(room=private, user=other_user)
    assert bodies(find(client, q="quarterly")) == []


def test_deleted_and_edited_text_is_gone_from_the_index(room, user, as_user, other_user):
    rooms.room_join(room=room, user=other_user)
    gone = factories.send(room, other_user, "embarrassing typo here")
    edited = factories.send(room, user, "original wording")
    message = Message.objects.get(pk=gone.envelope["data"]["id"])
    services.message_delete(message=message, actor=user)  # a moderator's (owner's) deletion
    services.message_edit(
        message=Message.objects.get(pk=edited.envelope["data"]["id"]),
        actor=user,
        body="better phrasing",
    )
    assert bodies(find(as_user, q="embarrassing")) == []
    assert bodies(find(as_user, q="original")) == []
    assert bodies(find(as_user, q="phrasing")) == ["better phrasing"]
    # Not only filtered out: the index itself holds no trace of the deleted text.
    assert index_matches("embarrassing") == 0 and index_matches("original") == 0
    assert index_matches("phrasing") == 1


def index_matches(word) -> int:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT count(*) FROM {Message._meta.db_table} "
                "WHERE search_vector @@ to_tsquery('simple', %s)",
                [word],
            )
        else:
            cursor.execute(
                f"SELECT count(*) FROM {search.FTS_TABLE} WHERE {search.FTS_TABLE} MATCH %s",
                [f'"{word}"'],
            )
        return cursor.fetchone()[0]


def test_retention_expired_text_is_not_found(room, user, as_user):
    old = factories.send(room, user, "ancient history")
    factories.send(room, user, "recent history")
    Room.objects.filter(pk=room.pk).update(history_start=old.seq + 1)  # purged up to here
    assert bodies(find(as_user, q="history")) == ["recent history"]


def test_the_retention_purge_removes_index_entries(room, user, as_user):
    from apps.events.models import Event
    from apps.messaging.retention import room_purge_history

    factories.send(room, user, "purged words")
    old = timezone.now() - timedelta(days=30)
    Event.objects.filter(room=room).update(ts=old)
    Event.objects.filter(room=room).mark_published()
    Room.objects.filter(pk=room.pk).update(retention_days=1)
    assert index_matches("purged") == 1
    room_purge_history(room_id=room.pk)
    assert not Message.objects.filter(room=room).exists()
    assert index_matches("purged") == 0


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "x" * 501},
        {"q": "nul\x00byte"},
        {"q": "a", "before": "x"},
        {"q": "a", "before": "0"},
        {"q": "a", "room": "abc"},
        {"q": "a", "limit": "1000"},
        {"q": "a", "author": "bad\x00"},
        {"q": "a", "before": str(2**70)},
        {"q": "a", "room": str(2**70)},
        {"q": "a", "author": str(2**70)},
    ],
)
def test_bad_input_is_400_invalid(as_user, params):
    response = as_user.get("/api/search/", params)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"


def test_search_needs_authentication():
    assert factories.api_client().get("/api/search/", {"q": "x"}).status_code in (401, 403)


def test_around_returns_the_window_newest_first(room, user, as_user):
    seqs = [factories.send(room, user, f"message {i}").seq for i in range(20)]
    hit = seqs[10]
    page = as_user.get(f"/api/rooms/{room.pk}/messages/", {"around": hit, "limit": 6}).json()
    got = [m["seq"] for m in page["results"]]
    assert got == [seqs[12], seqs[11], seqs[10], seqs[9], seqs[8], seqs[7]]
    older = as_user.get(page["next"]).json()
    assert [m["seq"] for m in older["results"]] == seqs[1:7][::-1]
    # Near the ends the window is just shorter.
    newest = as_user.get(f"/api/rooms/{room.pk}/messages/", {"around": seqs[-1], "limit": 6})
    assert [m["seq"] for m in newest.json()["results"]] == seqs[-4:][::-1]
    bad = as_user.get(f"/api/rooms/{room.pk}/messages/", {"around": hit, "before": hit})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    assert (
        as_user.get(f"/api/rooms/{room.pk}/messages/", {"around": "x"}).json()["code"] == "invalid"
    )


def test_fts5_expression_quotes_every_word():
    assert search.fts5_expression('a "b c" or d -e') == '(("a" AND "b c")) OR (("d") NOT "e")'
    assert search.fts5_expression('NEAR( AND "x') == '("NEAR" AND "AND" AND "x")'
    assert search.fts5_expression("-only") is None
    assert search.fts5_expression("or or") is None
    assert search.highlight_html("<\x02x\x03>") == "&lt;<mark>x</mark>&gt;"


def test_a_phrase_is_marked_word_by_word_as_postgresql_marks_it():
    # FTS5's snippet marks a matched phrase as one span, with what is between its words; the
    # highlight marks each word, as ts_headline does.
    assert search.marks_per_word("the \x02zebra,  crossing\x03 is") == (
        "the \x02zebra\x03,  \x02crossing\x03 is"
    )
    assert search.marks_per_word("\x02déjà-vu\x03 and \x02x\x03") == (
        "\x02déjà\x03-\x02vu\x03 and \x02x\x03"
    )
    assert search.marks_per_word("no marks") == "no marks"


def test_markup_is_left_out_of_the_text_fts5_indexes_as_postgresql_leaves_it_out():
    assert search.search_text('the <b class="x">zebra</b> crossing') == "the  zebra  crossing"
    assert search.search_text("a&lt;b &amp; c<br/>d <!-- e --> f") == "a b   c d   f"
    assert search.search_text("a <3 b < c > d") == "a <3 b < c > d"  # not tags


def test_a_phrase_matches_across_markup_with_one_mark_per_word_on_either_database(
    room, user, as_user
):
    factories.send(room, user, "the <b>zebra</b> crossing is here")
    factories.send(room, user, "a zebra, then a crossing")
    [hit] = find(as_user, q='"zebra crossing"')["results"]
    assert hit["message"]["body"] == "the <b>zebra</b> crossing is here"
    assert hit["highlight"].count("<mark>") == 2
    assert "<mark>zebra</mark>" in hit["highlight"]
    assert "<mark>crossing</mark>" in hit["highlight"]
    assert "&lt;b&gt;" not in hit["highlight"] and "<b>" not in hit["highlight"]


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.django_db
@postgresql_only("PostgreSQL's query plan (EXPLAIN ANALYZE) of the search statement")
def test_the_read_rule_is_read_once_a_search_and_only_the_page_is_highlighted(user, other_user):
    """Every match of a word is checked against the read rule before the newest are taken:
    the user's memberships and bans are read once (hashed), not once a match, and
    ts_headline runs for the page's rows only."""
    public = factories.make_room(other_user)
    private = factories.make_room(other_user, kind=Room.Kind.PRIVATE, members=[user])
    hidden = factories.make_room(other_user, kind=Room.Kind.PRIVATE)
    for index, room in enumerate([public, private, hidden] * 100):
        Message.objects.create(room=room, author=other_user, seq=10 + index, body="a needle")
    with CaptureQueriesContext(connection) as queries:
        page = search.search_messages(user, "needle", limit=20)
    assert len(page.messages) == 20 and page.more
    assert {m.room_id for m in page.messages} == {public.pk, private.pk}
    [statement] = [q["sql"] for q in queries.captured_queries if "ts_headline" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + statement)
        plan = cursor.fetchone()[0]
    root = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    nodes = list(plan_nodes(root))
    memberships = [n for n in nodes if n.get("Relation Name") == "rooms_membership"]
    assert memberships and all(n["Actual Loops"] == 1 for n in memberships), memberships
    headlines = [n for n in nodes if any("ts_headline" in o for o in n.get("Output", []))]
    assert headlines and all(n["Actual Rows"] * n["Actual Loops"] <= 21 for n in headlines)


@postgresql_only("PostgreSQL's GIN index and its storage parameters")
@pytest.mark.django_db
def test_the_search_index_keeps_a_short_pending_list():
    """The migrated index has gin_pending_list_limit = 256 kB (search.PG_PENDING_LIST_KB): an
    INSERT that overflows the list merges it into the index, and at the server's 4 MB default
    that merge held a send batch for 150-230 ms (bench/RESULTS.md, 3 December)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.reloptions, am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
            "WHERE c.relname = %s",
            [search.PG_INDEX],
        )
        options, method = cursor.fetchone()
    assert method == "gin"
    assert f"gin_pending_list_limit={search.PG_PENDING_LIST_KB}" in options
