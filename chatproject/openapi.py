"""OpenAPI schema post-processing: document the contract's errors on every operation.

Any REST call can be refused the same ways (PROTOCOL §3 codes, as JSON `Error`): a malformed
request (400), no or bad credentials (401), refused (403: role, CSRF, ban), missing or not
visible (404), throttled (429). Views document their specific answers; this hook adds the
common ones they leave out, so a client (and schemathesis) sees every status it may receive.
"""

COMMON_ERRORS = {
    "400": "Invalid request (see `errors` for per-field problems)",
    "401": "Not authenticated: no, wrong or expired credentials",
    "403": "Not allowed",
    "404": "Not found, or not visible to the caller",
    "429": "Rate limited: slow down",
}


def document_errors(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOKS entry."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in COMMON_ERRORS.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": error}
                )
    return result
