from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "apps.notifications"
    label = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        from apps.events.signals import events_committed
        from apps.rooms.signals import room_read

        from . import hooks, services

        events_committed.connect(hooks.on_events_committed, dispatch_uid="notifications-mentions")
        room_read.connect(services.on_room_read, dispatch_uid="notifications-read")
