from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.rooms import services as rooms
from apps.rooms.models import Room

DEMO_USERS = [("ada", "ada-demo-password"), ("grace", "grace-demo-password")]


class Command(BaseCommand):
    help = "Create demo users and a demo room (idempotent) and print how to log in."

    def handle(self, *args, **options):
        User = get_user_model()
        with transaction.atomic():
            users = []
            for username, password in DEMO_USERS:
                user, created = User.objects.get_or_create(username=username)
                if created:
                    user.set_password(password)
                    user.save()
                users.append(user)
            admin, created = User.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password("admin-demo-password")
                admin.save()
        room = Room.objects.filter(name="General", kind=Room.Kind.PUBLIC).first()
        if room is None:
            room = rooms.room_create(creator=users[0], name="General", topic="Say hello")
        for user in users[1:]:
            rooms.room_join(room=room, user=user)
        self.stdout.write("Demo accounts (development only):")
        for username, password in DEMO_USERS:
            self.stdout.write(f"  chat:  {username} / {password}")
        self.stdout.write("  admin: admin / admin-demo-password  (at /admin/)")
        self.stdout.write(f"Demo room: {room.name} (#{room.pk})")
