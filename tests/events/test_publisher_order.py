"""A room's later event never reaches Kafka before an earlier one that failed: each flush
sends at most one producer batch per partition (publisher.flush_rows), and a batch is appended
whole or not at all. The planning is a pure function (tested first); then the publisher
against the broker with batches small enough that a burst needs many flushes."""

from __future__ import annotations

import pytest
from django.test import override_settings

from apps.events import kafka, publisher
from apps.events.models import Event
from tests import factories
from tests.events.kafka_support import assert_per_room_order, read_topic


def record(room, seq, size, partition):
    row = publisher.Row(f"id-{room}-{seq}", room, "message.created", "x" * size, 0)
    return publisher.Record(row, row.value.encode(), str(room).encode(), [], partition)


def test_one_flush_holds_at_most_one_batch_per_partition():
    # Rooms 1 and 2 share partition 0; room 3 is alone on partition 1.
    records = (
        [record(1, s, 100, 0) for s in range(1, 6)]
        + [record(2, s, 100, 0) for s in range(1, 4)]
        + [record(3, s, 100, 1) for s in range(1, 4)]
    )
    budget = 5 * (100 + 1 + publisher.RECORD_OVERHEAD) - 1  # four of these records, not five
    chosen = publisher.flush_rows(records, budget)
    by_partition = {}
    for rec in chosen:
        by_partition[rec.partition] = by_partition.get(rec.partition, 0) + rec.size
    assert all(total <= budget for total in by_partition.values())
    assert [(r.row.room_id, int(r.row.pk.rsplit("-", 1)[1])) for r in chosen] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (3, 1),
        (3, 2),
        (3, 3),
    ]


def test_a_room_stops_at_its_first_record_that_does_not_fit():
    # Room 1's second record is too big for what is left; its third would fit but must wait.
    records = [record(1, 1, 50, 0), record(1, 2, 500, 0), record(1, 3, 10, 0), record(2, 1, 10, 0)]
    chosen = publisher.flush_rows(records, budget=300)
    assert [(r.row.room_id, r.row.pk) for r in chosen] == [(1, "id-1-1"), (2, "id-2-1")]


def test_a_record_larger_than_a_batch_goes_alone_for_its_partition():
    records = [record(1, 1, 1000, 0), record(2, 1, 10, 0), record(3, 1, 10, 1)]
    chosen = publisher.flush_rows(records, budget=300)
    assert [r.row.pk for r in chosen] == ["id-1-1", "id-3-1"]
    # Nothing fits beside it; next flush, the small one goes.
    assert [r.row.pk for r in publisher.flush_rows(records[1:], budget=300)] == ["id-2-1", "id-3-1"]


def test_partition_for_is_kafkas_default_partitioner():
    from kafka.partitioner import DefaultPartitioner

    class Cluster:
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4, 5}

        def available_partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4, 5}

    for room in range(1, 200):
        key = kafka.record_key(room)
        assert kafka.partition_for(key, [0, 1, 2, 3, 4, 5]) == DefaultPartitioner().partition(
            "t", None, key, None, None, Cluster()
        )


@pytest.mark.kafka
@pytest.mark.django_db
def test_a_burst_over_many_small_flushes_keeps_every_rooms_order():
    kafka.reset_producer()
    try:
        owner = factories.make_user()
        rooms = [factories.make_room(owner) for _ in range(12)]
        for n in range(15):
            for room in rooms:
                factories.send(room, owner, body=f"{room.pk} {n} " + "y" * 200)
        # Every row of the log, room creations and joins included, not only the sends.
        pending = list(Event.objects.unpublished().values_list("id", flat=True))
        with override_settings(KAFKA_BATCH_SIZE=2048):
            result = publisher.publish_pending()
        assert result.errors == []
        assert result.published == len(pending)
        # 180 sends of ~700 bytes over 6 partitions, at most ~2.7 KB per partition per flush.
        assert result.batches >= 10
        assert not Event.objects.unpublished().exists()
        records = read_topic(want_ids=pending)
        mine = [r for r in records if r.envelope["id"] in {str(i) for i in pending}]
        assert len(mine) == len(pending)  # none twice: nothing failed, nothing was resent
        assert_per_room_order(mine, {str(i): True for i in pending})
    finally:
        kafka.reset_producer()
