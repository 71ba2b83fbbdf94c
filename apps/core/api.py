"""What every REST interface shares: query-parameter helpers, the error body's schema, and
REST errors as JSON with a stable `code` (the contract's codes) and a human `detail`.

DRF's errors go through `exception_handler`; what Django answers by itself under /api/ (its
400, 403, 404 and 500 pages, the debug pages, a CSRF failure, a body over
DATA_UPLOAD_MAX_MEMORY_SIZE) is turned into the same JSON by `ApiErrorsMiddleware`.
"""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpResponseBadRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import CODES, ServiceError, invalid

LIMIT = OpenApiParameter("limit", int, description="Page size")


# --- Query parameters and request bodies ---------------------------------------------------------


def int_param(request, name, *, default=None, minimum=0, maximum=None) -> int | None:
    """An integer query parameter, or a clear `invalid` error."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise invalid(f"{name} must be {bound}")
    return value


def limit_param(request, page) -> int:
    """`limit` within `page` = (default, maximum)."""
    return int_param(request, "limit", default=page[0], minimum=1, maximum=page[1])


def next_url(request, **params) -> str:
    """This request's absolute URL with `params` replaced (the next page's link)."""
    url = request.build_absolute_uri()
    for key, value in params.items():
        url = replace_query_param(url, key, value)
    return url


def bool_param(request, name) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def validated(serializer_class, request, *, partial=False) -> dict:
    """The request body validated by `serializer_class` (DRF's 400 otherwise)."""
    form = serializer_class(data=request.data, partial=partial)
    form.is_valid(raise_exception=True)
    return form.validated_data


# --- Create answers that show a secret once ------------------------------------------------------


def shown_once(serializer_class, name: str, help_text: str):
    """`serializer_class` with one read-only string more, `name`: the answer to a create that
    shows its secret this once (an API token, a bot's token, an incoming webhook's URL). Named
    `<Base>CreatedSerializer`, as the hand-written classes were, so OpenAPI components keep
    their names."""
    meta = type("Meta", (serializer_class.Meta,), {"fields": [*serializer_class.Meta.fields, name]})
    return type(
        serializer_class.__name__.removesuffix("Serializer") + "CreatedSerializer",
        (serializer_class,),
        {
            "__module__": serializer_class.__module__,
            name: serializers.CharField(read_only=True, help_text=help_text),
            "Meta": meta,
        },
    )


def created(serializer_class, instance, **shown) -> Response:
    """201: the instance as `serializer_class` shows it, plus what is shown this once."""
    return Response({**serializer_class(instance).data, **shown}, status=status.HTTP_201_CREATED)


class ErrorSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=list(CODES))
    detail = serializers.CharField()
    errors = serializers.DictField(required=False, help_text="Per-field problems.")


# --- Errors ---------------------------------------------------------------------------------------

_CODE_BY_STATUS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "invalid",
    406: "invalid",
    413: "too_large",
    415: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def code_for_status(status_code: int) -> str:
    """The contract's code for an HTTP status (any 5xx: `unavailable`)."""
    if status_code >= 500:
        return "unavailable"
    return _CODE_BY_STATUS.get(status_code, "invalid")


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body = {"code": exc.code, "detail": exc.message, **exc.extra}
        if exc.field:
            body["errors"] = {exc.field: [exc.message]}
        response = Response(body, status=exc.status)
        if "retry_after" in exc.extra:
            response["Retry-After"] = str(exc.extra["retry_after"])
        return response
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        response.status_code = status.HTTP_401_UNAUTHORIZED
    code = code_for_status(response.status_code)
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        body = {"code": code, "detail": str(data["detail"])}
    else:
        body = {"code": code, "detail": "invalid input", "errors": data}
    response.data = body
    return response


@csrf_exempt  # it changes nothing, so any method gets the 404 (not an HTML CSRF 403)
def api_not_found(request, *args, **kwargs):
    """Any other path under /api/ (a negative id, a typo): the JSON 404, not Django's HTML page."""
    return JsonResponse({"code": "not_found", "detail": "no such API endpoint"}, status=404)


def _api_error(code: str, detail: str, status_code: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status_code)


class ApiErrorsMiddleware:
    """Every answer under /api/ is JSON with a contract code (see the module docstring), a
    body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused before it is parsed (413), and no request
    anywhere carries a NUL character in its query string (PostgreSQL cannot hold one in text:
    a search for it was a DataError, a 500)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        api = request.path_info.startswith("/api/")
        if "%00" in request.META.get("QUERY_STRING", ""):
            if api:
                return _api_error("invalid", "the query string holds a NUL character", 400)
            return HttpResponseBadRequest(
                "NUL character in the query string", content_type="text/plain"
            )
        if api and self.too_large(request):
            return _api_error("too_large", "the request body is too large", 413)
        if api and request.method not in ("GET", "HEAD") and not request.path_info.endswith("/"):
            # Every API path ends with a slash. Django's APPEND_SLASH cannot redirect a body:
            # it raised (a 500) under DEBUG, and redirected a POST to a GET otherwise.
            return _api_error("not_found", "no such API endpoint (API paths end with /)", 404)
        response = self.get_response(request)
        if (
            api
            and response.status_code >= 400
            and not isinstance(response, Response)  # DRF's: already the contract (or browsable)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            detail = getattr(response, "reason_phrase", "") or "error"
            replaced = _api_error(
                code_for_status(response.status_code), detail.lower(), response.status_code
            )
            for header, value in response.items():  # security headers, Allow, Retry-After...
                if header.lower() not in ("content-type", "content-length"):
                    replaced[header] = value
            replaced.cookies = response.cookies
            return replaced
        return response

    @staticmethod
    def too_large(request) -> bool:
        """A body over DATA_UPLOAD_MAX_MEMORY_SIZE (multipart aside: there the limit is for the
        fields, not the files). Django checks it only when it reads the body itself, and DRF
        reads the stream: a JSON or form body of any size was parsed whole."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None or request.content_type == "multipart/form-data":
            return False
        try:
            return int(request.META.get("CONTENT_LENGTH") or 0) > limit
        except ValueError:
            return False

    def process_exception(self, request, exception):
        # Raised by a view reading the body: Django would answer a 400 page (SuspiciousOperation).
        if not request.path_info.startswith("/api/"):
            return None
        if isinstance(exception, RequestDataTooBig):
            return _api_error("too_large", "the request body is too large", 413)
        if isinstance(exception, TooManyFieldsSent):
            return _api_error("too_large", "the request has too many fields", 413)
        return None
