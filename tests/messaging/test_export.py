"""GET /api/me/export/ (PROTOCOL §6): the caller's own data as JSON Lines, streamed, with no
other user's text in it."""

import http.client
import json
import time
import tracemalloc
import uuid

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.attachments import services as attachments
from apps.attachments import thumbnails
from apps.messaging import services as messaging
from apps.messaging.export import export_lines
from apps.messaging.models import Message
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from apps.rooms.models import Room
from apps.users import services as users
from tests import factories
from tests.attachments.conftest import body_of, png

pytestmark = pytest.mark.django_db


def export_of(user):
    response = factories.api_client(user).get("/api/me/export/")
    assert response.status_code == 200
    assert response.streaming
    body = b"".join(response.streaming_content)
    return response, body


def parse(body: bytes) -> list[dict]:
    text = body.decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def seed_messages(room, author, count, *, body_size=100) -> None:
    """`count` messages written in bulk (the export reads only the rows, not the log)."""
    start = Room.objects.get(pk=room.pk).last_seq
    now = timezone.now()
    for offset in range(0, count, 5000):
        Message.objects.bulk_create(
            [
                Message(
                    room=room,
                    author=author,
                    seq=start + n + 1,
                    created_at=now,
                    body=f"{n:08d} " + "x" * body_size,
                )
                for n in range(offset, min(count, offset + 5000))
            ]
        )
    Room.objects.filter(pk=room.pk).update(last_seq=start + count)


def test_export_is_json_lines_of_the_callers_own_data_and_nothing_of_anyone_else(
    room, user, other_user
):
    rooms.room_join(room=room, user=other_user)
    private = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    mine = factories.send(room, user, body="my own words")
    gone = factories.send(private, user, body="words I deleted")
    theirs = factories.send(room, other_user, body="SECRET other person's words")
    factories.send(private, other_user, body="SECRET private reply")
    messaging.message_delete(
        message=Message.objects.get(pk=gone.envelope["data"]["id"]), actor=user
    )
    their_message = Message.objects.get(pk=theirs.envelope["data"]["id"])
    stranger = factories.make_user()
    users.block_create(blocker=user, blocked=stranger)
    users.block_create(blocker=other_user, blocked=user)  # theirs: not in the caller's export
    messaging.reaction_add(message=their_message, user=user, emoji="👍")
    messaging.reaction_add(message=their_message, user=other_user, emoji="🎉")
    Notification.objects.create(
        user=user,
        event_id=uuid.uuid4(),
        room=room,
        seq=theirs.seq,
        message_id=their_message.pk,
        actor=other_user,
        excerpt="SECRET other person's words",
    )
    Notification.objects.create(
        user=other_user,
        event_id=uuid.uuid4(),
        room=room,
        seq=mine.seq,
        message_id=mine.envelope["data"]["id"],
        actor=user,
    )

    response, body = export_of(user)

    assert response["Content-Type"] == "application/x-ndjson"
    assert "attachment" in response["Content-Disposition"]
    lines = parse(body)
    assert lines[0] == {
        "kind": "account",
        "id": user.pk,
        "username": user.username,
        "email": user.email,
        "date_joined": lines[0]["date_joined"],
        "last_login": None,
    }
    kinds = [line["kind"] for line in lines]
    assert kinds == [
        "account",
        "membership",
        "membership",
        "message",
        "message",
        "reaction",
        "notification",
        "block",
    ]
    memberships = {line["room"]: line for line in lines if line["kind"] == "membership"}
    assert set(memberships) == {room.pk, private.pk}
    assert memberships[private.pk]["role"] == "owner"
    messages = [line for line in lines if line["kind"] == "message"]
    assert [(m["room"], m["seq"], m["body"], m["deleted"]) for m in messages] == [
        (room.pk, mine.seq, "my own words", False),
        (private.pk, gone.seq, None, True),
    ]
    assert all(m["ts"].endswith("Z") for m in messages)
    [reaction] = [line for line in lines if line["kind"] == "reaction"]
    assert reaction == {
        "kind": "reaction",
        "message": their_message.pk,
        "room": room.pk,
        "emoji": "👍",
        "ts": reaction["ts"],
    }
    [notification] = [line for line in lines if line["kind"] == "notification"]
    assert notification["message"] == their_message.pk and notification["actor"] == other_user.pk
    assert lines[-1] == {"kind": "block", "user": stranger.pk, "ts": lines[-1]["ts"]}
    assert b"SECRET" not in body and "🎉".encode() not in body
    assert b"words I deleted" not in body


def upload(user, data: bytes, name: str, content_type: str) -> str:
    made = attachments.upload_create(
        owner=user, uploaded_file=SimpleUploadedFile(name, data, content_type)
    )
    return str(made.pk)


def test_a_messages_attachments_are_in_the_export_with_links_the_owner_can_open(
    room, user, other_user
):
    photo = upload(user, png(640, 480), "sunset.png", "image/png")
    thumbnails.make(photo)  # what the worker does after the upload's commit
    notes = upload(user, b"the agenda\n", "notes.txt", "text/plain")
    lost = upload(user, b"gone with its message\n", "lost.txt", "text/plain")
    sent = factories.send(room, user, "two files", attachments=[photo, notes])
    deleted = factories.send(room, user, "a file I deleted", attachments=[lost])
    messaging.message_delete(
        message=Message.objects.get(pk=deleted.envelope["data"]["id"]), actor=user
    )
    plain = factories.send(room, user, "no files")

    _, body = export_of(user)

    messages = {line["id"]: line for line in parse(body) if line["kind"] == "message"}
    with_files = messages[sent.envelope["data"]["id"]]
    assert [a["id"] for a in with_files["attachments"]] == [photo, notes]  # the sent order
    image, text = with_files["attachments"]
    base = "http://testserver/api/uploads/"
    assert image == {
        "id": photo,
        "name": "sunset.png",
        "size": len(png(640, 480)),
        "content_type": "image/png",
        "width": 640,
        "height": 480,
        "url": f"{base}{photo}/file/",
        "thumbnail_url": f"{base}{photo}/thumbnail/",
    }
    assert text == {
        "id": notes,
        "name": "notes.txt",
        "size": len(b"the agenda\n"),
        "content_type": "text/plain",
        "width": None,
        "height": None,
        "url": f"{base}{notes}/file/",
        "thumbnail_url": None,
    }
    # As in the message objects of REST, but for the links (there signed, expiring, relative).
    page = factories.api_client(user).get(f"/api/rooms/{room.pk}/messages/").json()["results"]
    [rest] = [m["attachments"] for m in page if m["id"] == with_files["id"]]
    links = ("url", "thumbnail_url")
    assert [{k: v for k, v in a.items() if k not in links} for a in rest] == [
        {k: v for k, v in a.items() if k not in links} for a in (image, text)
    ]
    assert messages[deleted.envelope["data"]["id"]]["attachments"] == []
    assert messages[plain.envelope["data"]["id"]]["attachments"] == []
    assert b"lost.txt" not in body

    # The links work for the owner (their token, as a session would), for no one else.
    owner = factories.api_client(user)
    for link, expected in ((text["url"], b"the agenda\n"), (image["url"], png(640, 480))):
        response = owner.get(link.removeprefix("http://testserver"))
        assert response.status_code == 200 and body_of(response) == expected
    thumbnail = owner.get(image["thumbnail_url"].removeprefix("http://testserver"))
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/jpeg"
    outsider = factories.api_client(factories.make_user())
    private = factories.make_room(user, kind=Room.Kind.PRIVATE)
    hidden = upload(user, b"private notes\n", "private.txt", "text/plain")
    factories.send(private, user, "private file", attachments=[hidden])
    assert outsider.get(f"/api/uploads/{hidden}/file/").status_code == 404
    assert any(
        a["id"] == hidden for line in parse(export_of(user)[1]) for a in line.get("attachments", [])
    )
    assert hidden.encode() not in export_of(other_user)[1]


def test_the_exports_attachment_reads_do_not_grow_with_the_messages(room, user):
    def queries_of_export() -> int:
        with CaptureQueriesContext(connection) as queries:
            lines = list(export_lines(user))
        assert lines
        return len(queries.captured_queries)

    factories.send(room, user, "one", attachments=[upload(user, b"a\n", "a.txt", "text/plain")])
    few = queries_of_export()
    for n in range(30):
        notes = upload(user, f"{n}\n".encode(), f"{n}.txt", "text/plain")
        factories.send(room, user, f"file {n}", attachments=[notes])
    assert queries_of_export() == few


def test_export_needs_authentication(db):
    response = factories.api_client().get("/api/me/export/")
    assert response.status_code in (401, 403)
    assert response.json()["code"] == "unauthenticated"


def test_export_is_rate_limited(user):
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "export": "2/hour"}
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    ):
        client = factories.api_client(user)
        assert client.get("/api/me/export/").status_code == 200
        assert client.get("/api/me/export/").status_code == 200
        third = client.get("/api/me/export/")
    assert third.status_code == 429 and third.json()["code"] == "rate_limited"


def test_a_large_export_is_generated_in_bounded_memory(room, user):
    seed_messages(room, user, 20_000, body_size=1000)  # about 21 MB of JSON
    tracemalloc.start()
    try:
        size = lines = 0
        for chunk in export_lines(user):
            size += len(chunk)
            lines += chunk.count("\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 20_000 + 2  # account, membership, the messages
    assert size > 20_000_000
    # Held at once: one cursor fetch of rows and one piece of lines, not the whole export.
    print(f"export of {size / 1e6:.1f} MB generated with a peak of {peak / 2**20:.1f} MiB")
    assert peak < size / 8, (peak, size)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_server_streams_a_large_export_without_holding_it(server, user):
    room = factories.make_room(user)
    seed_messages(room, user, 20_000, body_size=1000)
    token = factories.make_token(user)

    def peak_rss_kib() -> int:
        with open(f"/proc/{server.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    def download():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("GET", "/api/me/export/", headers={"Authorization": f"Token {token}"})
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()[:500]
        assert reply.getheader("Content-Type") == "application/x-ndjson"
        started = time.monotonic()
        first = reply.read(65536)
        first_at = time.monotonic() - started
        rest = reply.read()
        conn.close()
        return first + rest, first_at, time.monotonic() - started

    other = factories.make_user()
    factories.make_room(other)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # warm the server
    conn.request(
        "GET", "/api/me/export/", headers={"Authorization": f"Token {factories.make_token(other)}"}
    )
    assert conn.getresponse().read().startswith(b'{"kind":"account"')
    conn.close()
    before = peak_rss_kib()

    body, first_at, total = download()

    growth_mib = (peak_rss_kib() - before) / 1024
    lines = parse(body)
    assert len(lines) == 20_002 and len(body) > 20_000_000
    seqs = [line["seq"] for line in lines[2:]]
    assert seqs == list(range(seqs[0], seqs[0] + 20_000))
    print(
        f"export of {len(body) / 1e6:.1f} MB: first 64 KiB after {first_at * 1000:.0f} ms, "
        f"all after {total * 1000:.0f} ms; server peak RSS grew {growth_mib:.1f} MiB"
    )
    assert growth_mib < len(body) / 2**20 / 2, growth_mib
