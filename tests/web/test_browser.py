"""The web client in headless Chromium against a real daphne server (PROTOCOL §3, §4).

Long because every browser scenario shares one costly set-up (a server, Chromium, logged-in
pages); the scenarios are independent tests.
"""

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from apps.messaging.models import Message
from apps.moderation.models import Report
from apps.rooms.models import Room
from apps.rooms.services import direct_room_open, member_ban, member_kick
from tests import factories
from tests.support.processes import ChildProcess, ServerProcess
from tests.support.services import wait_port

from .conftest import admin_login, in_thread, login, make_user, screenshot, wait_connected

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><b>bold</b> & co'


def message(page, text):
    """The message item whose body is exactly `text`."""
    return page.locator("#messages > li").filter(
        has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$"))
    )


def composer(page):
    return page.get_by_role("textbox", name="Message", exact=True)


def open_room(page, name):
    page.locator("#room-list").get_by_role("button", name=name).click()
    expect(page.locator("#room-title")).to_have_text(name)


def test_two_users_chat_live(server, open_page):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        general = factories.make_room(alice, name="General", members=[bob])
        other = factories.make_room(alice, name="Random", members=[bob])
        direct_room_open(user=alice, other=bob)
        return alice, bob, general, other

    alice, bob, general, other = in_thread(setup)
    a = open_page(server, alice)
    b = open_page(server, bob, width=390, height=800)  # phone width
    open_room(a, "General")
    open_room(b, "General")
    # Presence of direct-message partners: bob's page starts from /presence/, alice's page
    # hears bob arrive over the socket.
    expect(b.locator("#room-list li", has_text="alice").locator(".presence")).to_have_class(
        re.compile("online")
    )
    expect(a.locator("#room-list li", has_text="bob").locator(".presence")).to_have_class(
        re.compile("online")
    )

    # Send: shown at once, confirmed by the ack, seen live on the other side.
    composer(a).fill("hi bob")
    composer(a).press("Enter")
    expect(message(a, "hi bob")).not_to_have_class(re.compile("pending|failed"))
    expect(message(b, "hi bob")).to_have_count(1)

    # Typing indicator.
    composer(b).press_sequentially("thinking", delay=20)
    expect(a.locator("#typing")).to_have_text("bob is typing…")

    # Reply and reaction from bob.
    composer(b).fill("")
    message(b, "hi bob").get_by_role("button", name="Reply", exact=True).click()
    expect(b.locator("#reply-text")).to_contain_text("Replying to alice")
    composer(b).fill("hello alice")
    b.get_by_role("button", name="Send").click()
    expect(message(a, "hello alice").locator(".reply-ref")).to_have_text("↪ alice: hi bob")
    expect(a.locator("#typing")).to_have_text("")
    message(b, "hi bob").get_by_role("button", name="React with 👍").click()
    expect(message(a, "hi bob").locator(".reaction")).to_have_text("👍 1")
    expect(message(b, "hi bob").locator(".reaction")).to_have_attribute("aria-pressed", "true")

    # Edit, then delete, one's own message.
    message(a, "hi bob").get_by_role("button", name="Edit").click()
    a.get_by_label("Edit message").fill("hi bob (edited text)")
    a.get_by_role("button", name="Save").click()
    edited = message(b, "hi bob (edited text)")
    expect(edited).to_have_count(1)
    expect(edited.locator(".edited")).to_have_text("(edited)")
    message(a, "hello alice").hover()
    screenshot(a, "room-desktop")
    screenshot(b, "room-phone")

    # A moderator (the room owner) sees moderation controls and removes bob's message.
    expect(message(b, "hello alice").get_by_role("button", name="Remove")).to_have_count(0)
    message(a, "hello alice").get_by_role("button", name="Remove").click()
    expect(b.locator("#messages .body", has_text="Message removed by a moderator")).to_have_count(1)
    expect(message(a, "hello alice")).to_have_count(0)
    message(a, "hi bob (edited text)").get_by_role("button", name="Delete").click()
    expect(b.locator("#messages .body", has_text="Message deleted")).to_have_count(1)

    # Unread count for a room bob is not looking at, cleared when he opens it.
    a.locator("#room-list").get_by_role("button", name="Random").click()
    composer(a).fill("over here")
    composer(a).press("Enter")
    b.get_by_role("button", name="← Rooms").click()
    expect(b.locator("#room-list li", has_text="Random").locator(".badge")).to_have_text("1")
    screenshot(b, "room-list-phone")
    open_room(b, "Random")
    expect(message(b, "over here")).to_have_count(1)
    b.get_by_role("button", name="← Rooms").click()
    expect(b.locator("#room-list li", has_text="Random").locator(".badge")).to_have_count(0)
    open_room(b, "General")

    # Mute and ban through the moderator controls (REST): bob's sends fail, then the room goes.
    open_room(a, "General")
    composer(b).fill("let me speak")
    composer(b).press("Enter")
    message(a, "let me speak").get_by_role("button", name="Mute bob").click()
    expect(a.locator("#room-error")).to_have_text("bob is muted for 10 minutes.")
    composer(b).fill("am I muted")
    composer(b).press("Enter")
    expect(message(b, "am I muted").locator(".status")).to_contain_text("you are muted")
    message(a, "let me speak").get_by_role("button", name="Ban bob").click()
    expect(b.locator("#sidebar-error")).to_have_text("You were banned from General.")
    expect(b.locator("#room-list li", has_text="General")).to_have_count(0)
    assert a.errors == [] and b.errors == []
    b.context.close()
    expect(a.locator("#room-list li", has_text="bob").locator(".presence")).to_have_class(
        re.compile("offline")
    )


def test_a_ban_ends_the_room_on_the_page_even_when_frames_were_lost(server, open_page):
    """The banned user's page forgets the room however the ban reaches it. CI, 3 December:
    bob's page kept General open after the ban (no "You were banned" line). Besides the
    deadlock of tests/rooms/test_locks.py, this page could do that on its own: a ban that
    came after an event the page had not applied was buffered behind the gap, the
    gap fill was refused (banned users may not read), and the server's `unsubscribed` frame
    that followed was ignored. Here the relay drops frames on purpose: in General a message
    before the ban and the `unsubscribed` frame (the ban arrives after a gap), in Random the
    ban event itself (only `unsubscribed`, reason banned, arrives). In Lobby nothing is lost:
    a moderator removes bob, and his page says so."""

    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        general = factories.make_room(alice, name="General", members=[bob])
        random_room = factories.make_room(alice, name="Random", members=[bob])
        lobby = factories.make_room(alice, name="Lobby", members=[bob])
        return alice, bob, general, random_room, lobby

    alice, bob, general, random_room, lobby = in_thread(setup)
    dropped = []

    def keep(frame):
        lost = (
            (frame.get("type") == "message.created" and frame["data"]["body"] == "never seen")
            or (frame.get("type") == "unsubscribed" and frame.get("room") == general.id)
            or (frame.get("type") == "member.banned" and frame.get("room") == random_room.id)
        )
        if lost:
            dropped.append((frame["type"], frame.get("reason")))
        return not lost

    b = open_page(server, bob, ws_filter=keep)
    open_room(b, "General")
    in_thread(lambda: factories.send(general, alice, "never seen"))
    in_thread(lambda: member_ban(room=general, actor=alice, user=bob))
    expect(b.locator("#sidebar-error")).to_have_text("You were banned from General.")
    expect(b.locator("#room-list li", has_text="General")).to_have_count(0)
    expect(b.locator("#room-error")).to_have_text("")  # no refused gap fill shown

    open_room(b, "Random")
    in_thread(lambda: member_ban(room=random_room, actor=alice, user=bob))
    expect(b.locator("#sidebar-error")).to_have_text("You were banned from Random.")
    expect(b.locator("#room-list li", has_text="Random")).to_have_count(0)

    open_room(b, "Lobby")
    in_thread(lambda: member_kick(room=lobby, actor=alice, user=bob))
    expect(b.locator("#sidebar-error")).to_have_text("You were removed from Lobby.")
    expect(b.locator("#room-list li", has_text="Lobby")).to_have_count(0)
    # What the relay took away (besides the reply to the page's own unsubscribe, and the copy
    # of Random's ban that reaches the user's sockets once the subscription has ended).
    assert {
        ("message.created", None),
        ("unsubscribed", "banned"),
        ("member.banned", None),
    } <= set(dropped), dropped
    assert b.errors == []


def test_an_edit_in_progress_survives_the_message_being_redrawn(server, open_page):
    """A message redrawn while its author edits it (here bob reacts to it, and replies in its
    thread) keeps the text typed so far and the caret: Save sends that text. Before, the
    redraw put the old body back in a new form, and Save sent no edit (CI, 2 December: the
    thread's unread count arrived between the typing and the click)."""

    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        factories.make_room(alice, name="General", members=[bob])
        return alice, bob

    alice, bob = in_thread(setup)
    a, b = open_page(server, alice), open_page(server, bob)
    open_room(a, "General")
    open_room(b, "General")
    composer(a).fill("first draft")
    composer(a).press("Enter")
    expect(message(b, "first draft")).to_have_count(1)

    message(a, "first draft").get_by_role("button", name="Edit").click()
    box = a.get_by_label("Edit message")
    box.fill("second dra")
    message(b, "first draft").get_by_role("button", name="React with 👍").click()
    expect(a.locator("#messages .reaction")).to_have_text("👍 1")  # alice's item was redrawn
    expect(box).to_have_value("second dra")
    expect(box).to_be_focused()
    box.press_sequentially("ft")  # where the caret was
    a.get_by_role("button", name="Save").click()
    expect(message(b, "second draft")).to_have_count(1)
    expect(message(a, "second draft")).to_have_count(1)

    # The same for a report being filled in: bob's item is redrawn when alice reacts.
    item = message(b, "second draft")
    item.hover()
    item.locator('[data-action="report"]').click()
    item.get_by_label("Report as").select_option("abuse")
    reason = item.get_by_label("Reason")
    reason.fill("rude")
    message(a, "second draft").get_by_role("button", name="React with 🎉").click()
    expect(item.locator(".reaction", has_text="🎉")).to_have_text("🎉 1")
    expect(item.get_by_label("Report as")).to_have_value("abuse")
    expect(reason).to_have_value("rude")
    expect(reason).to_be_focused()
    item.get_by_role("button", name="Send report").click()
    expect(b.locator("#room-error")).to_contain_text("the moderators have your report")
    report = in_thread(lambda: Report.objects.get())
    assert (report.category, report.reason, report.body) == ("abuse", "rude", "second draft")
    assert a.errors == [] and b.errors == []


def test_admin_delete_disappears_from_open_page(server, open_page, browser):
    def setup():
        alice, moderator = make_user("alice"), make_user("mod", moderator=True)
        room = factories.make_room(alice, name="General")
        factories.send(room, alice, "keep this")
        doomed = factories.send(room, alice, "remove me").envelope["data"]["id"]
        return alice, moderator, doomed

    alice, moderator, doomed = in_thread(setup)
    page = open_page(server, alice)
    open_room(page, "General")
    expect(message(page, "remove me")).to_have_count(1)

    admin = browser.new_context()
    try:
        ap = admin.new_page()
        admin_login(ap, server, moderator.username, "/admin/messaging/message/")
        ap.locator(f'input[name="_selected_action"][value="{doomed}"]').check()
        ap.locator('select[name="action"]').select_option("delete_messages")
        ap.get_by_role("button", name="Go").click()
        ap.get_by_label("Reason").fill("spam")
        ap.locator('input[name="apply"]').click()
        expect(ap.locator(".messagelist")).to_contain_text("1 done")
    finally:
        admin.close()

    expect(
        page.locator("#messages .body", has_text="Message removed by a moderator")
    ).to_have_count(1)
    expect(message(page, "remove me")).to_have_count(0)
    expect(message(page, "keep this")).to_have_count(1)


def _post_message(base_url, token, room_id, body):
    request = urllib.request.Request(
        f"{base_url}/api/rooms/{room_id}/messages/",
        data=json.dumps({"body": body}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_restart_reconnects_without_holes_or_duplicates(open_page, child_env, request):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        room = factories.make_room(alice, name="General", members=[bob])
        for i in range(3):
            factories.send(room, bob, f"before {i}")
        return alice, room.pk, factories.make_token(bob)

    alice, room_id, bob_token = in_thread(setup)
    # A second server on the same database, for other people's REST calls while ours is down
    # (started now so its start-up overlaps the rest).
    other = ServerProcess(child_env)
    ChildProcess.start(other)
    request.addfinalizer(other.stop)
    server = ServerProcess(child_env).start()  # its own: this test kills it
    request.addfinalizer(server.stop)
    page = open_page(server, alice)
    open_room(page, "General")
    expect(message(page, "before 2")).to_have_count(1)

    server.kill()  # a crash: the page sees the socket drop at once
    expect(page.locator("#connection")).to_contain_text("reconnecting")
    # A send while the server is down is marked failed and keeps its client_id for the retry.
    composer(page).fill("sent while down")
    composer(page).press("Enter")
    failed = message(page, "sent while down")
    expect(failed).to_have_class(re.compile("failed"))
    client_id = failed.get_attribute("data-client-id")

    # Meanwhile other people keep talking, through the other server (REST).
    wait_port("127.0.0.1", other.port, timeout=30, proc=other.proc)
    for i in range(8):
        _post_message(other.http_url, bob_token, room_id, f"meanwhile {i}")
    other.kill()
    event_pages = []
    page.on("request", lambda r: "/events/" in r.url and event_pages.append(r.url))

    # The same port comes back with a replay limit of 3: the page must page the rest.
    restarted = ServerProcess(dict(child_env, CHAT_REPLAY_LIMIT="3"), port=server.port).start()
    try:
        wait_connected(page, timeout=40000)
        expect(message(page, "meanwhile 7")).to_have_count(1)
        assert event_pages, "the truncated replay was not paged from the events API"
        failed.get_by_role("button", name="Retry").click()
        expect(message(page, "sent while down")).not_to_have_class(re.compile("failed|pending"))
        expected = [f"before {i}" for i in range(3)] + [f"meanwhile {i}" for i in range(8)]
        expected.append("sent while down")
        expect(page.locator("#messages > li .body")).to_have_text(expected)
        seqs = [
            int(s)
            for s in page.locator("#messages > li").evaluate_all(
                "items => items.map(li => li.dataset.seq)"
            )
        ]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        stored = in_thread(
            lambda: list(Message.objects.filter(client_id=client_id).values_list("body", flat=True))
        )
        assert stored == ["sent while down"]
        screenshot(page, "after-restart")
        assert page.errors == []
    finally:
        restarted.stop()


def test_html_is_text_and_history_scrolls_back(server, open_page):
    def setup():
        alice = make_user("alice")
        room = factories.make_room(alice, name="General")
        for i in range(64):
            factories.send(room, alice, f"old {i:02d}")
        factories.send(room, alice, HOSTILE)
        return alice

    alice = in_thread(setup)
    page = open_page(server, alice)
    open_room(page, "General")
    expect(message(page, HOSTILE)).to_have_count(1)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#messages script, #messages img, #messages b").count() == 0
    expect(page.locator("#messages > li")).to_have_count(50)  # the newest page
    screenshot(page, "hostile-text")

    page.get_by_role("button", name="Load older messages").click()
    expected = [f"old {i:02d}" for i in range(64)] + [HOSTILE]
    expect(page.locator("#messages > li .body")).to_have_text(expected)
    expect(page.get_by_role("button", name="Load older messages")).to_be_hidden()


def test_sign_up_log_out_and_log_in(server, browser):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.http_url + "/")
        expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
        page.get_by_role("link", name="Sign up").click()
        page.get_by_label("Username").fill("newcomer")
        page.get_by_label("Password", exact=True).fill("a long enough pass 42")
        page.get_by_label("Password again").fill("a long enough pass 42")
        page.get_by_role("button", name="Create account").click()
        wait_connected(page)
        expect(page.locator(".me")).to_have_text("newcomer")

        # Start a direct message and create a private room from the page.
        in_thread(make_user, "friend")
        page.locator("summary", has_text="Direct message").click()
        page.get_by_label("Username").fill("friend")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#room-title")).to_have_text("friend")
        page.locator("summary", has_text="New room").click()
        page.get_by_label("Room name").fill("Secret")
        page.get_by_label("Private (invite only)").check()
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#room-title")).to_have_text("Secret")
        page.get_by_label("Invite", exact=True).fill("friend")
        page.get_by_role("button", name="Invite", exact=True).click()
        expect(page.locator("#room-error")).to_have_text("friend was invited.")
        kinds = in_thread(
            lambda: sorted(
                Room.objects.filter(memberships__user__username="friend").values_list(
                    "kind", flat=True
                )
            )
        )
        assert kinds == ["direct", "private"]

        # Join a public room from the list, then leave it.
        in_thread(lambda: factories.make_room(name="Lobby"))
        page.reload()
        wait_connected(page)
        page.locator("summary", has_text="Join a public room").click()
        page.get_by_role("button", name="Join Lobby").click()
        expect(page.locator("#room-title")).to_have_text("Lobby")
        page.get_by_role("button", name="Leave room").click()
        expect(page.locator("#room-list li", has_text="Lobby")).to_have_count(0)
        expect(page.locator("#public-rooms")).to_contain_text("Lobby")

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login/$"))
        login(page, server, "newcomer", "a long enough pass 42")
    finally:
        context.close()


def test_keyboard_only_and_every_control_labelled(server, open_page):
    alice = in_thread(make_user, "alice")
    in_thread(factories.make_room, alice, name="General")
    page = open_page(server, alice)
    expect(page.locator("#room-title")).to_have_text("General")  # opened by itself on a desktop
    # The first Tab reaches the skip link, which leads to the message box; Enter sends.
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(composer(page)).to_be_focused()
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect(message(page, "typed with the keyboard")).not_to_have_class(re.compile("pending|failed"))
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select, button')]
        .filter((el) => el.type !== 'hidden')
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.textContent.trim())
        .map((el) => el.outerHTML)""")
    assert unlabelled == []


def test_timeline_applies_events_in_seq_order_once(server, browser):
    """The ordering rules of timeline.js and the reconnect delays of socket.js, run as the page
    runs them (ES modules in Chromium)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.http_url + "/login/")
        result = page.evaluate("""async () => {
            const { RoomState } = await import('/static/web/timeline.js');
            const me = { id: 1, username: 'me' };
            const room = new RoomState({ id: 9, last_seq: 10, unread: 0 }, me);
            const created = (seq, id, body) => ({ type: 'message.created', room: 9, seq,
                id: 'e' + seq, ts: '2026-01-01T00:00:00.000000Z', actor: { id: 2, username: 'bo' },
                data: { id, body, reply_to: null, client_id: 'c' + seq } });
            const edited = (seq, id, body) => ({ type: 'message.edited', room: 9, seq, id: 'e' + seq,
                actor: { id: 2, username: 'bo' }, data: { id, body, edited_at: 'x' } });
            const results = [
                room.offer(created(12, 101, 'second')),   // a hole at 11: waits
                room.offer(created(11, 100, 'first')),    // fills it; 12 follows
                room.offer(created(11, 100, 'first')),    // replayed again: dropped
                room.offer(edited(14, 100, 'first v3')),  // a hole at 13: waits
                room.offer(edited(13, 100, 'first v2')),
                room.offer(created(9, 99, 'ancient')),    // below the cursor: dropped
            ];
            const bodies = room.sorted().map((m) => m.body);
            const { backoffDelay } = await import('/static/web/socket.js');
            const ceilings = [0, 1, 2, 3, 4, 5, 9].map((n) => backoffDelay(n, { random: () => 0.999999 }));
            const floor = backoffDelay(3, { random: () => 0 });
            return { results, bodies, cursor: room.cursor, gap: room.hasGap, unread: room.unread,
                     ceilings, floor };
        }""")
    finally:
        context.close()
    assert result == {
        "results": ["gap", "applied", "duplicate", "gap", "applied", "duplicate"],
        "bodies": ["first v3", "second"],
        "cursor": 14,
        "gap": False,
        "unread": 2,
        # Reconnect delays: full jitter under an exponential ceiling capped at 8 s.
        "ceilings": [499, 999, 1999, 3999, 7999, 7999, 7999],
        "floor": 100,
    }


# --- Moderation and safety in the page (PROTOCOL §7) -------------------------------------------


def test_block_and_unblock_from_the_author_name_hides_their_messages(server, open_page):
    def setup():
        alice, troll = make_user("alice"), make_user("troll")
        room = factories.make_room(alice, name="General", members=[troll])
        factories.send(room, troll, "first noise")
        return alice, troll, room

    alice, troll, room = in_thread(setup)
    a = open_page(server, alice)
    open_room(a, "General")
    expect(message(a, "first noise")).to_have_count(1)
    a.locator("#messages").get_by_role("button", name="troll").first.click()
    a.get_by_role("menuitem", name="Block troll").click()
    expect(message(a, "first noise")).to_have_count(0)
    expect(a.locator("#messages .msg.blocked .hidden-note")).to_have_count(1)
    assert in_thread(lambda: list(troll.blocked_by.values_list("blocker_id", flat=True))) == [
        alice.pk
    ]
    # Live messages of a blocked user are hidden too, and stay hidden after a reload.
    in_thread(factories.send, room, troll, "more noise")
    expect(a.locator("#messages .msg.blocked")).to_have_count(2)
    a.reload()
    wait_connected(a)
    open_room(a, "General")
    expect(a.locator("#messages .msg.blocked")).to_have_count(2)
    expect(message(a, "more noise")).to_have_count(0)

    # A reply to a blocked user's message does not quote it.
    def reply():
        noise = Message.objects.get(room=room, body="first noise")
        factories.send(room, alice, "answering", reply_to=noise.pk)

    in_thread(reply)
    expect(message(a, "answering").locator(".reply-ref")).to_have_text(
        "↪ a message from someone you blocked"
    )
    # Unblock from the same menu: the messages come back.
    a.locator("#messages").get_by_role("button", name="troll").first.click()
    a.get_by_role("menuitem", name="Unblock troll").click()
    expect(message(a, "first noise")).to_have_count(1)
    expect(message(a, "more noise")).to_have_count(1)
    assert in_thread(lambda: troll.blocked_by.count()) == 0
    assert not a.errors, a.errors


def test_slow_mode_counts_down_in_the_composer(server, open_page):
    def setup():
        owner, member = make_user("owner"), make_user("member")
        room = factories.make_room(owner, name="Slow", members=[member])
        from apps.rooms.services import room_update

        room_update(room=room, actor=owner, slow_mode_seconds=3)
        return owner, member, room

    owner, member, room = in_thread(setup)
    page = open_page(server, member)
    open_room(page, "Slow")
    expect(page.locator("#slow-mode")).to_have_text("Slow mode: one message every 3 s.")
    composer(page).fill("first")
    composer(page).press("Enter")
    expect(message(page, "first")).not_to_have_class(re.compile("pending|failed"))
    expect(page.locator("#slow-mode")).to_have_text(
        re.compile(r"^Slow mode: you can post again in [123] s\.$")
    )
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    composer(page).fill("second")
    composer(page).press("Enter")  # refused by the page itself while the countdown runs
    expect(message(page, "second")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=8000)
    expect(page.locator("#slow-mode")).to_have_text("Slow mode: one message every 3 s.")
    page.get_by_role("button", name="Send").click()
    expect(message(page, "second")).not_to_have_class(re.compile("pending|failed"))
    # A refusal by the server (this tab has no countdown; another tab posted meanwhile)
    # starts the countdown from retry_after.
    other_tab = open_page(server, member)
    open_room(other_tab, "Slow")
    expect(message(other_tab, "second")).to_have_count(1)
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=8000)
    composer(page).fill("third")
    composer(page).press("Enter")
    expect(message(page, "third")).not_to_have_class(re.compile("pending|failed"))
    composer(other_tab).fill("too soon")
    composer(other_tab).press("Enter")
    expect(message(other_tab, "too soon")).to_have_class(re.compile("failed"))
    expect(other_tab.locator("#slow-mode")).to_have_text(
        re.compile(r"^Slow mode: you can post again in [123] s\.$")
    )
    expect(other_tab.get_by_role("button", name="Send")).to_be_disabled()
    assert in_thread(lambda: Message.objects.filter(room=room, author=member).count()) == 3
    assert not page.errors, page.errors


def test_announcement_rooms_show_a_read_only_composer_to_members(server, open_page):
    def setup():
        owner, member = make_user("owner"), make_user("member")
        room = factories.make_room(owner, name="News", members=[member])
        return owner, member, room

    owner, member, room = in_thread(setup)
    reader = open_page(server, member)
    writer = open_page(server, owner)
    open_room(reader, "News")
    open_room(writer, "News")
    expect(composer(reader)).to_be_enabled()

    def announce():
        from apps.rooms.services import room_update

        room_update(room=room, actor=owner, post_policy="moderators")

    in_thread(announce)  # live: room.updated switches the reader's composer off
    expect(composer(reader)).to_be_disabled()
    expect(composer(reader)).to_have_attribute(
        "placeholder", "Only moderators can post in this room."
    )
    expect(composer(writer)).to_be_enabled()
    composer(writer).fill("release tonight")
    composer(writer).press("Enter")
    expect(message(reader, "release tonight")).to_have_count(1)
    reader.reload()
    wait_connected(reader)
    open_room(reader, "News")
    expect(composer(reader)).to_be_disabled()
    assert not reader.errors and not writer.errors
