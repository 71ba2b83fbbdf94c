from django.contrib import admin
from django.urls import include, path

from apps.events import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("chatproject.api_urls")),
    path("", include("apps.web.urls")),
]
