"""ASGI entry point: HTTP to Django, WebSocket through the handshake guard and authentication."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from apps.messaging.routing import websocket_urlpatterns  # noqa: E402
from apps.users.auth import TokenOrSessionAuthMiddlewareStack  # noqa: E402
from chatproject.wsguard import WebSocketGuard  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Path, Origin and TLS are checked before the session is read (chatproject.wsguard).
        "websocket": WebSocketGuard(
            TokenOrSessionAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
            routes=websocket_urlpatterns,
        ),
    }
)
