"""The REST API's JSON parser and browsable renderer (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES
and DEFAULT_RENDERER_CLASSES).

Its own module: DRF imports it while loading its settings, before rest_framework.views exists.
"""

from rest_framework import exceptions, parsers, renderers


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with nesting too deep for the decoder (a RecursionError, not a
    ValueError) refused as a parse error instead of escaping as a 500. (The body's size is
    bounded before any parser runs: apps.core.api.ApiErrorsMiddleware.)"""

    def parse(self, stream, media_type=None, parser_context=None):
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
