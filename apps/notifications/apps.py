from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "apps.notifications"
    label = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        from apps.events.signals import events_committed

        from . import hooks

        events_committed.connect(hooks.on_events_committed, dispatch_uid="notifications-mentions")
