"""REST errors as JSON with a stable `code` (the contract's codes) and a human `detail`."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from chatproject.errors import ServiceError

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


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body = {"code": exc.code, "detail": exc.message}
        field = getattr(exc, "field", None)
        if field:
            body["errors"] = {field: [exc.message]}
        return Response(body, status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        response.status_code = status.HTTP_401_UNAUTHORIZED
    code = _CODE_BY_STATUS.get(response.status_code, "invalid")
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
