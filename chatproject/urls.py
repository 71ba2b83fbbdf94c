from django.contrib import admin
from django.urls import include, path

from apps.events import health
from apps.web.views import login_guard

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    # The admin's log-in checks passwords too: the same throttle and hashing bound as /login/.
    path("admin/login/", login_guard(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/", include("chatproject.api_urls")),
    path("", include("apps.web.urls")),
]
