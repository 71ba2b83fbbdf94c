"""Usernames: NFKC first, one case-folded form per account (a unique index), one script."""

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from tests import factories

_addresses = (f"10.7.{i // 250}.{i % 250 + 1}" for i in itertools.count())
PASSWORD = "a-fine-long-password"


def signup(username):
    return APIClient(REMOTE_ADDR=next(_addresses)).post(
        "/api/users/", {"username": username, "password": PASSWORD}, format="json"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "first, second",
    [
        ("ada", "\uff21\uff44\uff41"),  # fullwidth Ａｄａ: NFKC makes it Ada
        ("ada", "ADA"),
        ("Straße", "STRASSE"),  # case folding, not lower()
        ("\u2167x", "viiix"),  # Ⅷ (a compatibility character) is VIII after NFKC
    ],
)
def test_a_name_equal_after_normalization_and_case_folding_is_taken(first, second):
    assert signup(first).status_code == 201
    response = signup(second)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid" and "taken" in body["detail"] and "username" in body["errors"]
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_the_name_is_stored_normalized():
    assert signup("\uff21\uff44\uff41").json()["username"] == "Ada"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name", ["\u0430dm\u0456n", "p\u0430ypal", "\u03b1lice", "Bob\u0411", "ivan.иван"]
)
def test_names_mixing_latin_cyrillic_and_greek_are_refused(name):
    response = signup(name)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid" and "one script" in body["detail"]
    assert "username" in body["errors"]
    assert not get_user_model().objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["иван", "Αθηνά", "José", "李小龍", "مريم", "bob_42", "ivan_2"])
def test_names_in_one_script_pass(name):
    response = signup(name)
    assert response.status_code == 201, response.content


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_a_second_case_folded_name_whatever_the_path():
    factories.make_user("grace")
    with pytest.raises(IntegrityError), transaction.atomic():
        get_user_model().objects.create_user(username="GRACE", password=PASSWORD)
    user = get_user_model().objects.get(username="grace")
    user.username = "Grace"  # renaming to a form of one's own name is fine
    user.save(update_fields=["username"])
    assert get_user_model().objects.get(pk=user.pk).username_key == "grace"


@pytest.mark.django_db
def test_the_admin_refuses_a_taken_or_mixed_script_name_as_a_form_error(admin_client):
    factories.make_user("hopper")
    for name, complaint in [("HOPPER", "already exists"), ("h\u043epper", "one script")]:
        response = admin_client.post(
            "/admin/users/user/add/",
            {
                "username": name,
                "password1": PASSWORD,
                "password2": PASSWORD,
                "usable_password": "true",
            },
        )
        assert response.status_code == 200, name
        assert complaint in response.content.decode(), name
    assert get_user_model().objects.filter(username_key="hopper").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_renames_later_colliding_accounts_deterministically(capsys):
    """Rows the old check let in (`ada`, then `Ada` and `Ａｄａ`-made `ADA`) before 0002: the
    first to join keeps the name, each later one becomes `<name>-<id>`."""
    executor = MigrationExecutor(connection)
    executor.migrate([("users", "0001_initial")])
    old_apps = executor.loader.project_state([("users", "0001_initial")]).apps
    OldUser = old_apps.get_model("users", "User")
    ada = OldUser.objects.create(username="ada", password="!")
    later = OldUser.objects.create(username="Ada", password="!")
    latest = OldUser.objects.create(username="ADA", password="!")
    other = OldUser.objects.create(username="grace", password="!")
    try:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    finally:
        out = capsys.readouterr().out
    User = get_user_model()
    names = dict(User.objects.values_list("pk", "username"))
    assert names[ada.pk] == "ada" and names[other.pk] == "grace"
    assert names[later.pk] == f"Ada-{later.pk}" and names[latest.pk] == f"ADA-{latest.pk}"
    assert f"renamed user {later.pk} 'Ada' -> 'Ada-{later.pk}'" in out
    assert dict(User.objects.values_list("pk", "username_key"))[ada.pk] == "ada"
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(username="aDa", password=PASSWORD)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "existing, lookalike",
    [
        ("pop", "\u0440\u043e\u0440"),  # Cyrillic рор
        ("hot", "\u0397\u039f\u03a4"),  # Greek ΗΟΤ
        ("ace_1", "\u0430\u0441\u0435_1"),  # Cyrillic асе with a suffix
    ],
)
def test_a_cyrillic_or_greek_name_that_reads_as_an_existing_latin_one_is_refused(
    existing, lookalike
):
    assert signup(existing).status_code == 201
    response = signup(lookalike)
    assert response.status_code == 400, response.content
    assert "looks like an existing" in response.json()["detail"]
    # The same name is fine where nobody has the Latin one.
    get_user_model().objects.filter(username=existing).delete()
    assert signup(lookalike).status_code == 201
