"""Existing replies join threads (PROTOCOL §8): each message with a reply_to gets `thread` =
the root of its reply_to chain, each root its reply_count (live replies) and last_reply_seq,
and the root's author and every replier follow the thread, with its history read. Plain SQL,
the same on PostgreSQL and SQLite; it can run again (it recomputes the same values)."""

from django.db import migrations

MAX_DEPTH = 10_000  # reply_to always names an earlier message, so chains end


def backfill(apps, schema_editor):
    Message = apps.get_model("messaging", "Message")
    ThreadFollow = apps.get_model("messaging", "ThreadFollow")
    connection = schema_editor.connection
    m = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {m} SET thread_id = reply_to_id WHERE reply_to_id IS NOT NULL")
        for _ in range(MAX_DEPTH):  # climb one level a pass: thread = the parent's thread
            cursor.execute(
                f"UPDATE {m} SET thread_id = (SELECT p.thread_id FROM {m} p "
                f"WHERE p.id = {m}.thread_id) "
                f"WHERE thread_id IN (SELECT id FROM {m} WHERE thread_id IS NOT NULL)"
            )
            if not cursor.rowcount:
                break
        cursor.execute(
            f"UPDATE {m} SET "
            f"reply_count = (SELECT COUNT(*) FROM {m} c WHERE c.thread_id = {m}.id "
            "AND c.deleted_at IS NULL), "
            f"last_reply_seq = (SELECT MAX(c.seq) FROM {m} c WHERE c.thread_id = {m}.id "
            "AND c.deleted_at IS NULL) "
            f"WHERE id IN (SELECT thread_id FROM {m} WHERE thread_id IS NOT NULL)"
        )
    replies = Message.objects.filter(thread__isnull=False)
    roots = Message.objects.filter(pk__in=replies.values("thread_id"))
    last = dict(roots.values_list("id", "last_reply_seq"))
    follows = set(roots.values_list("author_id", "id"))
    follows.update(replies.values_list("author_id", "thread_id").distinct())
    ThreadFollow.objects.bulk_create(
        [ThreadFollow(user_id=user_id, root_id=root_id, last_read_seq=last.get(root_id) or 0)
         for user_id, root_id in follows],
        batch_size=1000, ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [("messaging", "0005_threads")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
