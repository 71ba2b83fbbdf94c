"""The WebSocket consumer (PROTOCOL §3). Minimal first cut: hello and ping only."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.send_json({"type": "error", "code": "unauthenticated",
                                  "message": "log in or send a token"})
            await self.close(code=4401)
            return
        await self.send_json({"type": "hello", "user": {"id": user.pk, "username": user.username},
                              "heartbeat": settings.CHAT_HEARTBEAT_SECONDS})

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ping":
            reply = {"type": "pong"}
            if "ref" in content:
                reply["ref"] = content["ref"]
            await self.send_json(reply)
