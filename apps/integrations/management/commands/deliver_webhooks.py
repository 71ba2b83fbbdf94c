"""`python manage.py deliver_webhooks`: the outgoing webhook worker (apps.integrations.delivery)."""

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError

from apps.integrations.delivery import Deliverer


class Command(BaseCommand):
    help = "Deliver outgoing webhooks from the room event log until stopped (SIGTERM, Ctrl-C)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--shard",
            type=int,
            default=0,
            help="This worker's share: webhooks whose id modulo --shards is this",
        )
        parser.add_argument("--shards", type=int, default=1, help="Workers sharing the webhooks")

    def handle(self, *args, shard, shards, **options):
        if shards < 1 or not 0 <= shard < shards:
            raise CommandError("need 0 <= --shard < --shards")
        asyncio.run(self.main(shard, shards))

    async def main(self, shard, shards):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.stdout.write(f"delivering webhooks (shard {shard} of {shards})")
        await Deliverer(shard=shard, shards=shards).run(stop)
