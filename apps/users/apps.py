from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "apps.users"
    label = "users"

    def ready(self):
        from . import rights, sessions  # noqa: F401  (logout closes that session's sockets)

        rights.connect()  # changes of rights reach open sockets
