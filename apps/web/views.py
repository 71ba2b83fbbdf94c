"""The chat page and the Django-session pages around it (login, logout, sign-up)."""

import functools

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie

from apps.core.errors import ServiceError
from apps.rooms.models import Membership, Room
from apps.users import passwords, presence
from apps.users import services as users
from apps.users.services import is_site_moderator
from apps.users.throttles import SignupThrottle, TokenThrottle


@login_required
@ensure_csrf_cookie
def chat_page(request):
    """The single-page client; everything after this comes over REST and the WebSocket."""
    user = request.user
    config = {
        "user": {
            "id": user.pk,
            "username": user.username,
            "is_moderator": is_site_moderator(user),
        },
        "wsPath": "/ws/",
        "apiRoot": "/api/",
        "heartbeat": settings.CHAT_HEARTBEAT_SECONDS,
        "maxLength": settings.CHAT_MESSAGE_MAX_LENGTH,
        "uploadMaxBytes": settings.UPLOAD_MAX_BYTES,
        "retentionDays": settings.RETENTION_DAYS or None,  # the site default (null: forever)
    }
    # Text goes in as text (textContent), and even so nothing but the app's own files may run:
    # apps.web.csp.STRICT_CSP, as on every page.
    return render(request, "web/chat.html", {"config": config})


@login_required
@ensure_csrf_cookie
def tokens_page(request):
    """The API token page: list, create (the secret shown once), revoke (apps/web/static/web/
    tokens.js over /api/tokens/)."""
    return render(request, "web/tokens.html")


def password_form(throttle_class, template: str, refusal: str):
    """For a view whose POST checks or sets a password (log-in, sign-up, the admin's log-in):
    the API twin's throttle first, then one of the address's hashing slots around the view
    (apps/users/passwords.py). Refused: the form page again, as 429, with `refusal`."""

    def decorate(view):
        @functools.wraps(view)
        def guarded(request, *args, **kwargs):
            if request.method != "POST":
                return view(request, *args, **kwargs)
            wait = passwords.throttled(request, throttle_class)
            if wait is not None:
                return _too_many(request, template, refusal.format(wait=wait), wait)
            try:
                with passwords.hashing_slot(request):
                    return view(request, *args, **kwargs)
            except ServiceError as error:
                if error.code != "rate_limited":
                    raise
                return _too_many(request, template, error.message)  # every slot is busy

        return guarded

    return decorate


def _too_many(request, template, message, wait=None):
    context = {
        "refused": message,
        "form": SignupForm(),
        "signup_enabled": settings.SIGNUP_ENABLED,
        "next": request.POST.get("next", ""),
    }
    response = render(request, template, context, status=429)
    if wait:
        response["Retry-After"] = str(wait)
    return response


login_guard = password_form(
    TokenThrottle, "web/login.html", "Too many log-in attempts. Try again in {wait} seconds."
)


@method_decorator(login_guard, name="post")
class LoginPage(auth_views.LoginView):
    """Django's log-in, under the token endpoint's throttle and hashing bound (one bucket per
    client address for both)."""

    template_name = "web/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return super().get_context_data(signup_enabled=settings.SIGNUP_ENABLED, **kwargs)


class LogoutPage(auth_views.LogoutView):
    next_page = settings.LOGIN_URL


class SignupForm(forms.Form):
    username = forms.CharField(
        max_length=150, widget=forms.TextInput(attrs={"autocomplete": "username"})
    )
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=f"At least {settings.PASSWORD_MIN_LENGTH} characters; not a common password, "
        "not only digits, not like your username.",
    )
    password_again = forms.CharField(
        label="Password again", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data


@password_form(
    SignupThrottle,
    "web/signup.html",
    "Too many sign-ups from this address. Try again in {wait} seconds.",
)
def signup_page(request):
    """Open sign-up (settings.SIGNUP_ENABLED) through the same service as POST /api/users/."""
    if not settings.SIGNUP_ENABLED:
        raise Http404("sign-up is disabled")
    if request.user.is_authenticated:
        return redirect("web:chat")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = users.user_signup(
                username=form.cleaned_data["username"], password=form.cleaned_data["password"]
            )
        except ServiceError as error:
            field = error.field if error.field in form.fields else None
            form.add_error(field, error.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("web:chat")
    return render(request, "web/signup.html", {"form": form})


PRESENCE_MAX_USERS = 100


def _people_sharing_a_room(user, user_ids) -> list[int]:
    return list(
        Membership.objects.active()
        .filter(user_id__in=user_ids, room__in=Room.objects.joined_by(user))
        .values_list("user_id", flat=True)
        .distinct()
    )


async def presence_page(request):
    """GET /presence/?user=ID&user=ID: the current status of people who share a room with you.

    The socket only reports changes (presence.changed); this gives the page its starting point.
    Anyone else is left out, as the socket would never report them either.
    """
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"code": "unauthenticated", "detail": "log in first"}, status=401)
    try:
        wanted = {int(value) for value in request.GET.getlist("user")}
    except ValueError:
        return JsonResponse({"code": "invalid", "detail": "user must be a user id"}, status=400)
    if len(wanted) > PRESENCE_MAX_USERS:
        return JsonResponse(
            {"code": "invalid", "detail": f"at most {PRESENCE_MAX_USERS} users"}, status=400
        )
    shared = await sync_to_async(_people_sharing_a_room)(user, wanted)
    store = presence.backend()
    return JsonResponse({str(uid): await store.status(uid) for uid in sorted(shared)})
