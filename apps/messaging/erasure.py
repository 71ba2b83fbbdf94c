"""Erasing an account (PROTOCOL §6): unusable at once, its history redacted by a worker.

`account_erase` runs in the request: in one transaction the account is deactivated, renamed
`deleted-user-<id>`, its password made unusable and its tokens and sessions deleted; after
commit its sockets are closed (4401) on every process and the Celery task
`apps.messaging.tasks.erase_account_history` is queued. `erase_history` (the task) redacts
every message the user wrote in short batches, each its own transaction that locks one room
and records one `message.deleted` (reason "erased") per message, so the rooms stay writable and
their seqs gapless; then it writes the new name over every stored envelope that spelled the old
one (`actor`, `data.user`). Every step skips what is already done, so running it again is
harmless. A beat job (tasks.resume_erasures, every ERASURE_SWEEP_SECONDS) queues the task
again for an erased account that still has unredacted messages: an erasure requested while the
broker was down, or whose task gave up, completes.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.core.errors import forbidden, invalid
from apps.events.services import actor_event_ids, after_commit, rename_actor, rename_subject
from apps.rooms import services as rooms
from apps.users.services import ERASED_PREFIX, is_site_moderator
from apps.users.sessions import close_user_sockets

from .models import Message
from .services import messages_redact

logger = logging.getLogger(__name__)

ERASED_REASON = "erased"
CLOSE_UNAUTHENTICATED = 4401
# Ids read per pass of erase_history (each pass is then done in batches).
PASS_SIZE = 20_000
# Envelopes renamed per transaction, in erasure batches (each row is small to rewrite).
RENAME_CHUNK = 10
# Messages in an erasure's first batch when batches are timed (Pace): the size then follows
# the time per message.
FIRST_BATCH = 50

User = get_user_model()


def erased_username(user_id: int) -> str:
    return f"{ERASED_PREFIX}{user_id}"


def can_erase(actor, user) -> bool:
    """Superusers may erase any other account; site moderators the accounts that are not staff."""
    if actor is None or actor.pk == user.pk or not actor.is_active:
        return False
    if actor.is_superuser:
        return True
    return is_site_moderator(actor) and not user.is_staff and not user.is_superuser


def account_erase(*, user, actor, password=None):
    """Erase an account: its owner with their password, or an admin (`can_erase`).

    Unusable from the commit on; the history is redacted by the worker (erase_history)."""
    if actor.pk == user.pk:
        if not isinstance(password, str) or not password:
            raise invalid("password is required to delete your account")
        if not user.check_password(password):
            raise forbidden("wrong password")
    elif not can_erase(actor, user):
        raise forbidden("you may not erase this account")
    with transaction.atomic():
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        user.is_active = False
        # Read by the is_active signal that closes the user's sockets (ws-hardening).
        user._close_code = CLOSE_UNAUTHENTICATED
        user.username = erased_username(user.pk)
        user.email = user.first_name = user.last_name = ""
        user.set_unusable_password()
        user.erased_at = user.erased_at or timezone.now()
        user.save()
        Token.objects.filter(user_id=user.pk).delete()
        delete_sessions(user.pk)
        after_commit(lambda: _after_erase(user.pk))
    return user


def _after_erase(user_id: int) -> None:
    # The task module imports this one (the task runs erase_history): a cycle, listed in the
    # import contracts (pyproject.toml) until account_erase and erase_history are split.
    from .tasks import erase_account_history

    close_user_sockets(user_id, reason="the account was deleted")
    erase_account_history.delay(user_id)


def delete_sessions(user_id: int) -> int:
    """Delete the user's stored sessions (database sessions: each one is decoded)."""
    doomed = [
        session.pk
        for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
        if str(session.get_decoded().get("_auth_user_id")) == str(user_id)
    ]
    Session.objects.filter(pk__in=doomed).delete()
    return len(doomed)


class Pace:
    """The size of each batch and the rest after it. A batch's transaction holds its room's lock
    and keeps the database, its WAL and a core busy: its size follows the last batch's time per
    message so that it takes about `seconds` (at most `most` messages; `seconds` 0: always
    `most`), and after each batch the worker rests until the erasure is back to `rate` messages
    a second (0: no rest). On a quiet machine the batches are quick and the rests long, so the
    sends of every room keep the database between them; on a loaded one the batches are slow
    and the rests short, so the erasure still finishes at about the rate the machine allows."""

    def __init__(self, most: int, seconds: float, rate: float):
        self.most, self.seconds, self.rate = max(1, most), seconds, rate
        self.size = self.most if seconds <= 0 else min(self.most, FIRST_BATCH)

    def after(self, count: int, elapsed: float) -> None:
        if self.seconds > 0 and count:
            fits = int(self.seconds * count / elapsed) if elapsed > 0 else self.most
            self.size = max(1, min(self.most, fits, 2 * self.size))
        if self.rate > 0 and count / self.rate > elapsed:
            time.sleep(count / self.rate - elapsed)


def erase_history(
    *,
    user_id: int,
    batch_size: int | None = None,
    batch_seconds: float | None = None,
    rate: float | None = None,
) -> dict:
    """Redact every message of an erased account and rename it in the log (idempotent), in
    batches paced by Pace (the settings ERASURE_BATCH_SIZE, ERASURE_BATCH_SECONDS and
    ERASURE_RATE unless given)."""
    pace = Pace(
        batch_size or settings.ERASURE_BATCH_SIZE,
        settings.ERASURE_BATCH_SECONDS if batch_seconds is None else batch_seconds,
        settings.ERASURE_RATE if rate is None else rate,
    )
    user = User.objects.get(pk=user_id)
    if user.is_active:
        raise invalid("only an erased account's history is erased")
    counts = {"messages": 0, "batches": 0, "renamed": 0}
    while True:
        pending = list(
            Message.objects.filter(author_id=user_id, deleted_at__isnull=True)
            .order_by("room_id", "pk")
            .values_list("room_id", "pk")[:PASS_SIZE]
        )
        if not pending:
            break
        for room_id, ids in _batches(pending, lambda: pace.size):
            started = time.monotonic()
            done = _redact_batch(room_id, ids, user_id)
            pace.after(len(ids), time.monotonic() - started)
            counts["messages"] += done
            counts["batches"] += 1
    name = erased_username(user_id)
    if user.username != name:
        user.username = name
        user.save(update_fields=["username"])  # save() keeps username_key with it
    ids = actor_event_ids(user_id)
    chunk = pace.most * RENAME_CHUNK
    for start in range(0, len(ids), chunk):
        with transaction.atomic():
            counts["renamed"] += rename_actor(
                user_id=user_id, username=name, event_ids=ids[start : start + chunk]
            )
    with transaction.atomic():
        counts["renamed"] += rename_subject(user_id=user_id, username=name)
    logger.info("erased account %s: %s", user_id, counts)
    return counts


def unfinished_erasures(*, older_than: float = 0.0, limit: int = 100) -> list[int]:
    """Ids of erased accounts (erased more than `older_than` seconds ago) that still wrote a
    message not redacted: erasures whose task never ran or did not finish."""
    live = Message.objects.filter(author_id=OuterRef("pk"), deleted_at__isnull=True)
    before = timezone.now() - timedelta(seconds=older_than)
    return list(
        User.objects.filter(erased_at__isnull=False, erased_at__lte=before, is_active=False)
        .filter(Exists(live))
        .order_by("erased_at")
        .values_list("pk", flat=True)[:limit]
    )


def _batches(pending, size):
    """(room id, up to `size()` message ids of that room), in order; `size()` is asked again
    for each batch, once the previous one is done."""
    batch, room, limit = [], None, size()
    for room_id, pk in pending:
        if batch and (room_id != room or len(batch) >= limit):
            yield room, batch
            batch, limit = [], size()
        room = room_id
        batch.append(pk)
    if batch:
        yield room, batch


def _redact_batch(room_id: int, ids: list[int], user_id: int) -> int:
    """One short transaction: lock the room, redact its messages still live among `ids` (and
    rename the author in the rows it rewrites: the rename pass then skips them)."""
    with transaction.atomic():
        room = rooms.lock_room(room_id)
        live = list(
            Message.objects.filter(pk__in=ids, deleted_at__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if live:
            messages_redact(
                room=room,
                message_ids=live,
                actor=None,
                by_moderator=False,
                reason=ERASED_REASON,
                rename=(user_id, erased_username(user_id)),
            )
        return len(live)
