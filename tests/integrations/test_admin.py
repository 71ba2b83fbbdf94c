"""The admin shows each outgoing webhook's cursors, lag and last error."""

import pytest
from django.test import Client

from apps.integrations.models import OutgoingWebhook, WebhookCursor
from tests import factories

pytestmark = [pytest.mark.django_db]


def test_the_admin_lists_lag_and_last_error_and_shows_every_cursor():
    owner = factories.make_user()
    rooms = [factories.make_room(owner) for _ in range(2)]
    hook = OutgoingWebhook.objects.create(
        owner=owner, url="https://hooks.example.com/x", secret="s" * 20
    )
    WebhookCursor.objects.create(
        webhook=hook, room=rooms[0], seq=0, attempts=3, last_error="HTTP 503"
    )
    WebhookCursor.objects.create(webhook=hook, room=rooms[1], seq=rooms[1].last_seq)
    admin = factories.make_user(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    listing = client.get("/admin/integrations/outgoingwebhook/")
    assert listing.status_code == 200
    text = listing.content.decode()
    assert "hooks.example.com" in text and "HTTP 503" in text
    assert f'<td class="field-total_lag">{rooms[0].last_seq}</td>' in text
    page = client.get(f"/admin/integrations/outgoingwebhook/{hook.pk}/change/").content.decode()
    assert page.count("HTTP 503") == 1 and "room head" in page.lower()
    assert "s" * 20 not in page  # the secret is not shown
