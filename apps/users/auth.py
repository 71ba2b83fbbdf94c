"""WebSocket authentication: the Django session cookie, or `Authorization: Token <key>`."""

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser


@database_sync_to_async
def user_for_token(key: str):
    """(user or AnonymousUser, the ApiToken or None for a DRF authtoken key)."""
    from .tokens import user_for_key

    user, token = user_for_key(key)
    return (user or AnonymousUser()), token


def token_from_headers(headers) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            try:
                scheme, _, key = value.decode("latin-1").partition(" ")
            except UnicodeDecodeError:
                return None
            if scheme.lower() == "token" and key.strip():
                return key.strip()[:64]
    return None


class TokenAuthMiddleware(BaseMiddleware):
    """Fills scope["user"] from a token header when the session did not authenticate."""

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            key = token_from_headers(scope.get("headers", []))
            if key:
                scope["user"], scope["api_token"] = await user_for_token(key)
                scope["auth_method"] = "token"
        else:
            scope["auth_method"] = "session"
        return await super().__call__(scope, receive, send)


def TokenOrSessionAuthMiddlewareStack(inner):
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))
