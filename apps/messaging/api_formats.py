"""The REST API's JSON parser and browsable renderer (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES
and DEFAULT_RENDERER_CLASSES).

Its own module: DRF imports it while loading its settings, before rest_framework.views exists.
"""

from django.conf import settings
from rest_framework import exceptions, parsers, renderers


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "the request body is too large"
    default_code = "too_large"


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with two refusals instead of a 500 or unbounded memory: a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads the stream itself, so Django's own check never ran
    for JSON), and nesting too deep for the decoder (RecursionError, not a ValueError)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        if limit is not None and request is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                raise RequestTooLarge()
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's browsable API without its inline <style> of Pygments colours (the page runs under
    apps.web.csp.STRICT_CSP, which allows no inline style); code blocks in descriptions are
    shown uncoloured."""

    def get_context(self, *args, **kwargs):
        context = super().get_context(*args, **kwargs)
        context["code_style"] = None
        return context
