"""The bundled web client: the chat page and the session login, logout and sign-up pages."""

from django.urls import path

from . import views

app_name = "web"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("login/", views.LoginPage.as_view(), name="login"),
    path("logout/", views.LogoutPage.as_view(), name="logout"),
    path("signup/", views.signup_page, name="signup"),
    path("presence/", views.presence_page, name="presence"),
    path("tokens/", views.tokens_page, name="tokens"),
]
