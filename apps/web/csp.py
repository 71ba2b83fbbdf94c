"""A strict Content-Security-Policy on every HTML page the server makes.

Nothing but the server's own files may run, load or be framed: no inline script anywhere (the
API docs page loads its start-up script from its own URL, SpectacularSwaggerSplitView). A
page may set its own policy instead (the chat page does); this one fills in the rest (login,
sign-up, the admin, the browsable API, the API docs, Django's error pages).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings


def upload_image_origins() -> str:
    """Where attached images load from besides our own origin: with S3 storage the download
    view redirects to a presigned URL of the endpoint (or AWS's), so img-src names it."""
    if not getattr(settings, "UPLOAD_S3_BUCKET", None):
        return ""
    endpoint = getattr(settings, "UPLOAD_S3_ENDPOINT_URL", None)
    if endpoint:
        parts = urlsplit(endpoint)
        return f" {parts.scheme}://{parts.netloc}"
    return " https://*.amazonaws.com"


# 'self' in connect-src covers the same-origin WebSocket. img-src: blob: for the previews of
# files about to be uploaded (apps/web/static/web/attachments.js).
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    f"img-src 'self' data: blob:{upload_image_origins()}; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class ContentSecurityPolicyMiddleware:
    """Sets STRICT_CSP on HTML responses that carry no policy of their own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response and response.get(
            "Content-Type", ""
        ).startswith("text/html"):
            response["Content-Security-Policy"] = STRICT_CSP
        return response
