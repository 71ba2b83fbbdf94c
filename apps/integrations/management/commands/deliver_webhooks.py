"""`python manage.py deliver_webhooks`: the outgoing webhook worker (apps.integrations.delivery)."""

import asyncio
import json
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
        deliverer = Deliverer(shard=shard, shards=shards)
        # SIGUSR1: one JSON line of what the work cost so far (bench/webhooks.py reads it).
        loop.add_signal_handler(signal.SIGUSR1, self.print_stats, deliverer)
        self.stdout.write(f"delivering webhooks (shard {shard} of {shards})")
        await deliverer.run(stop)

    def print_stats(self, deliverer):
        self.stdout.write(json.dumps(dict(deliverer.stats)))
        self.stdout.flush()
