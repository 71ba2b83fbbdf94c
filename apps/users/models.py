import unicodedata

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


def username_key(username: str) -> str:
    """The form no two usernames may share: NFKC, then case-folded (`Ａｄａ`, `ADA`, `ada` are
    one name; so are `Straße` and `STRASSE`)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


def validate_one_script(username: str) -> None:
    """Refuse a username whose letters mix Latin, Cyrillic and Greek (`аdmіn` with Cyrillic а
    and і): the usual way to pass for someone else (Zulip and Mattermost refuse them too)."""
    scripts = set()
    for char in username:
        if char.isalpha():
            script = unicodedata.name(char, "").partition(" ")[0]
            if script in CONFUSABLE_SCRIPTS:
                scripts.add(script)
    if len(scripts) > 1:
        raise ValidationError(
            "Use letters of one script: this name mixes %(scripts)s.",
            code="mixed_script",
            params={"scripts": " and ".join(sorted(s.title() for s in scripts))},
        )


# Cyrillic and Greek letters (case-folded) that look like a Latin one in upper or lower case.
_LOOKS_LATIN = str.maketrans(
    "авекмнорстхуіјѕԁһԛԝӏѵαβεζηικμνορτυχ",
    "abekmhopctxyijsdhqwlvabezhikmnoptyx",
)


def latin_lookalike(key: str) -> str | None:
    """The Latin name a case-folded Cyrillic or Greek name passes for when every letter of it
    has a Latin twin (`рор` → `pop`, `ΗΟΤ` → `hot`), else None (UTS #39's whole-script
    confusables, for the letters that matter)."""
    skeleton = key.translate(_LOOKS_LATIN)
    if skeleton == key or any(c.isalpha() and not c.isascii() for c in skeleton):
        return None
    return skeleton


class User(AbstractUser):
    """The chat's user. Custom from the first migration so fields can be added later."""

    username = models.CharField(
        "username",
        max_length=150,
        unique=True,
        help_text="Required. 150 characters or fewer. Letters, digits and @/./+/-/_ only, "
        "in one script.",
        validators=[UnicodeUsernameValidator(), validate_one_script],
        error_messages={"unique": "A user with that username already exists."},
    )
    # Unique: the database refuses a second `Ada` beside `ada` even when both sign up at once.
    # Kept by save(); code that writes usernames with QuerySet.update() must set it too.
    # Nullable only so the release before it can still insert users during a rolling deploy.
    username_key = models.CharField(max_length=450, unique=True, null=True, editable=False)

    class DmPolicy(models.TextChoices):
        ANYONE = "anyone"
        SHARED_ROOMS = "shared_rooms"  # people who share a public or private room with you
        NOBODY = "nobody"

    # Who may open a direct room with this user (PROTOCOL §7).
    dm_policy = models.CharField(max_length=12, choices=DmPolicy.choices, default=DmPolicy.ANYONE)
    # Set when the account was erased (apps.messaging.erasure); it is then inactive and
    # named deleted-user-<id>.
    erased_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Bot accounts (PROTOCOL §10): no password, act through tokens, `actor.bot` on their
    # events. `bot_owner` is who created it (null for a room's webhook bot of a deleted owner).
    is_bot = models.BooleanField(default=False, editable=False)
    bot_owner = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bots",
        editable=False,
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def save(self, *args, **kwargs):
        self.username_key = username_key(self.username)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "username" in update_fields:
            kwargs["update_fields"] = {*update_fields, "username_key"}
        super().save(*args, **kwargs)

    def clean(self):
        super().clean()  # NFKC-normalizes the username
        if not isinstance(self.username, str):
            return  # the field's own validation reports it
        taken = type(self)._default_manager.filter(username_key=username_key(self.username))
        if taken.exclude(pk=self.pk).exists():
            raise ValidationError({"username": "A user with that username already exists."})

    def actor(self) -> dict:
        """The user as an envelope `actor` / `user` object."""
        if self.is_bot:
            return {"id": self.pk, "username": self.username, "bot": True}
        return {"id": self.pk, "username": self.username}


class Block(models.Model):
    """`blocker` blocked `blocked`: no direct room between them from the blocked side, no
    posting in an existing one, and the blocker's clients hide the blocked user's messages."""

    blocker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blocks"
    )
    blocked = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blocked_by"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="block_pair_unique"),
            models.CheckConstraint(
                condition=~models.Q(blocker=models.F("blocked")), name="block_not_self"
            ),
        ]
        indexes = [models.Index(fields=["blocked", "blocker"])]
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.blocker} blocks {self.blocked}"


class ApiToken(models.Model):
    """A named, scoped, expiring API token (PROTOCOL §10). Only a SHA-256 of its secret is
    stored; `key_id` (in clear in the token itself) finds the row (apps.users.tokens)."""

    READ, WRITE = "read", "write"
    SCOPES = (READ, WRITE)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"])]

    def __str__(self):
        return f"{self.user} / {self.name}"

    @property
    def can_write(self) -> bool:
        return self.WRITE in self.scopes

    def expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())
