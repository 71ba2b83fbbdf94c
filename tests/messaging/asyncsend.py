"""amessage_send_many (the server's asyncio lanes on PostgreSQL) on a connection of its own."""

import asyncio


def async_send_many(requests):
    import psycopg
    from django.db import connection

    from apps.messaging.services import amessage_send_many

    async def scenario():
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            return await amessage_send_many(conn, requests)

    return asyncio.run(scenario())
