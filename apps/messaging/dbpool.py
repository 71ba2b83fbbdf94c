"""The database thread pool of a server process (sync service calls from the event loop)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async
from django.conf import settings

_executor: ThreadPoolExecutor | None = None


def db(func):
    """Run a sync service call in the dedicated database thread pool (not thread-sensitive:
    calls from many sockets run in parallel, each thread on its own pooled connection)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.CHAT_DB_THREADS, thread_name_prefix="chat-db"
        )
    return database_sync_to_async(func, thread_sensitive=False, executor=_executor)
