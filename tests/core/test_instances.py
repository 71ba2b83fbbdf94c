"""apps/core/instances.py: InstanceBuilder(Model)(**kwargs) makes what Model(**kwargs) makes, on
the installed Django (this test fails when an upgrade changes the instance layout), and falls
back to Model(**kwargs) where it cannot."""

import uuid

import django
import pytest
from django.contrib.auth import get_user_model
from django.db.models.signals import post_init
from django.utils import timezone

from apps.core.instances import InstanceBuilder
from apps.events.models import Event
from apps.messaging.models import Message, Reaction
from apps.rooms.models import Membership, Room
from tests.factories import make_room, make_user


def test_the_django_release_these_tests_were_written_for():
    # A new release must pass the tests below before the pin in requirements/ moves.
    assert django.VERSION[:2] == (5, 2), f"check apps/core/instances.py on {django.__version__}"


def layout(instance) -> tuple:
    """An instance as Model.__init__ leaves it: its values by attname, its related-object
    cache, and its state."""
    values = {k: v for k, v in vars(instance).items() if k != "_state"}
    state = instance._state
    return values, dict(state.fields_cache), state.adding, state.db


def unsaved_room_and_user():
    room = Room(pk=7, name="r", last_seq=3)
    user = get_user_model()(pk=9, username="u")
    return room, user


def message_kwargs(room, user):
    return dict(
        room=room,
        author=user,
        body="hi",
        client_id=uuid.uuid4(),
        reply_to_id=None,
        thread_id=None,
        seq=4,
        created_at=timezone.now(),
    )


def test_a_message_is_laid_out_as_model_init_lays_it_out():
    room, user = unsaved_room_and_user()
    kwargs = message_kwargs(room, user)
    built = InstanceBuilder(Message)(**kwargs)
    assert type(built) is Message
    assert layout(built) == layout(Message(**kwargs))
    # defaults of the fields not given, the related objects cached, the ids copied
    assert built.reply_count == 0 and built.deleted_at is None and built.pk is None
    assert built.room is room and built.room_id == 7 and built.author_id == 9


def test_callable_defaults_run_for_each_instance_and_only_when_not_given():
    room, user = unsaved_room_and_user()
    build = InstanceBuilder(Event)
    kwargs = dict(type="message.created", room=room, seq=1, actor=user, ts=timezone.now())
    first, second = build(**kwargs), build(**kwargs)
    assert isinstance(first.id, uuid.UUID) and first.id != second.id
    reference = Event(**kwargs)
    for instance in (first, second):
        values, cache, adding, db = layout(instance)
        expected_values, expected_cache, expected_adding, expected_db = layout(reference)
        values.pop("id"), expected_values.pop("id")
        assert (values, cache, adding, db) == (
            expected_values,
            expected_cache,
            expected_adding,
            expected_db,
        )
    given = uuid.uuid4()
    assert build(id=given, **kwargs).id == given


def test_related_objects_may_be_none_and_attnames_may_be_given_directly():
    build = InstanceBuilder(Event)
    kwargs = dict(type="user.updated", room=None, actor=None, actor_id=None, ts=timezone.now())
    kwargs.pop("actor_id")
    assert layout(build(**kwargs))[1:] == layout(Event(**kwargs))[1:]
    assert build(**kwargs).room_id is None
    direct = dict(type="message.created", room_id=5, actor_id=6, seq=2, ts=timezone.now())
    built = build(**direct)
    assert built.room_id == 5 and built.actor_id == 6
    assert layout(built)[1:] == layout(Event(**direct))[1:]


def test_wrong_keywords_and_wrong_models_get_djangos_own_errors():
    build = InstanceBuilder(Message)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build(body="hi", no_such_field=1)
    room, user = unsaved_room_and_user()
    with pytest.raises(ValueError, match="must be a"):
        build(room=user, author=user, body="hi", seq=1)


def test_a_model_with_init_receivers_goes_through_model_init():
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=Reaction)
    try:
        built = InstanceBuilder(Reaction)(emoji="+1", message_id=1, user_id=2)
    finally:
        post_init.disconnect(receiver, sender=Reaction)
    assert seen == [built]


@pytest.mark.django_db
def test_built_instances_save_and_read_back_like_any_other():
    owner = make_user()
    room = make_room(owner)
    # loaded from the database: _state.db set, as the send path's locked rooms are
    room = Room.objects.get(pk=room.pk)
    membership = Membership.objects.get(room=room, user=owner)
    built = InstanceBuilder(Message)(**message_kwargs(room, membership.user))
    assert built._state.db == "default"
    built.save(force_insert=True)
    stored = Message.objects.get(pk=built.pk)
    assert (stored.room_id, stored.author_id, stored.body, stored.client_id, stored.seq) == (
        room.pk,
        owner.pk,
        "hi",
        built.client_id,
        4,
    )
    assert stored.reply_count == 0


def test_from_db_is_model_from_db_with_the_related_objects_assigned():
    user_model = get_user_model()
    user_row = [f.get_default() for f in user_model._meta.concrete_fields]
    user_row[0] = 9
    membership_row = [None] * len(Membership._meta.concrete_fields)
    membership_row[0] = 3
    for position, field in enumerate(Membership._meta.concrete_fields):
        if field.name == "user":
            membership_row[position] = 9
    user = InstanceBuilder(user_model).from_db("default", user_row)
    assert layout(user) == layout(user_model.from_db("default", None, user_row))
    assert user._state.adding is False and user._state.db == "default" and user.pk == 9

    built = InstanceBuilder(Membership).from_db("default", membership_row, user=user)
    expected = Membership.from_db("default", None, membership_row)
    expected.user = user
    assert layout(built) == layout(expected)
    assert built.user is user


def test_from_db_takes_rows_of_every_column_only():
    with pytest.raises(ValueError, match="a Room row has"):
        InstanceBuilder(Room).from_db("default", [1, "r"])


def test_from_db_on_a_model_with_init_receivers_goes_through_model_from_db():
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    row = [1, 2, 3, "+1", timezone.now()]
    assert len(row) == len(Reaction._meta.concrete_fields)
    post_init.connect(receiver, sender=Reaction)
    try:
        built = InstanceBuilder(Reaction).from_db("default", row)
    finally:
        post_init.disconnect(receiver, sender=Reaction)
    assert seen == [built] and built._state.adding is False
