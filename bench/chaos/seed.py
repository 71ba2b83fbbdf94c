"""Users, tokens and rooms for a chaos run, made through the services on the run's database.

Run as a child process (the caller's own Django, if any, points elsewhere):
`python -m bench.chaos.seed CLIENTS ROOMS` prints {"rooms": [...], "clients": [[token, room]]}.
"""

import json
import os
import sys


def main(argv=None):
    clients, rooms_count = (int(a) for a in (argv or sys.argv[1:]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.rooms import services as rooms

    User = get_user_model()
    users = [
        User.objects.create_user(username=f"chaos{i}", password="chaos-pw-1")
        for i in range(clients)
    ]
    room_ids = []
    for r in range(rooms_count):
        members = [u for i, u in enumerate(users) if i % rooms_count == r]
        room = rooms.room_create(
            creator=members[0], name=f"chaos room {r}", member_ids=[u.pk for u in members[1:]]
        )
        room_ids.append(room.pk)
    out = {
        "rooms": room_ids,
        "clients": [
            [Token.objects.create(user=u).key, room_ids[i % rooms_count]]
            for i, u in enumerate(users)
        ],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
