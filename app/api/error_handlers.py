"""Every error leaves the API as JSON {"detail": "<a sentence a client can act on>"}; on the Open Inference
Protocol's /v2 routes as that protocol's {"error": "..."} (app.core.errors.error_body)."""
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.core.config import V2_PREFIX
from app.api.input_errors import as_api_error
from app.core.errors import APIError, error_body
from preprocessing.errors import InputError
from app.core.observability import REQUEST_ID_HEADER, request_id_var

logger = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499  # nginx's convention: the client hung up before it was answered (never a 5xx)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_disconnected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, exc.detail), status_code=exc.status_code, headers=exc.headers)


async def input_error(request: Request, exc: InputError) -> JSONResponse:
    return await api_error(request, as_api_error(exc))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
    if errors and all(e["type"] == "json_invalid" for e in errors):  # not JSON at all: a syntax error, 400
        where = exc.errors()[0].get("ctx", {}).get("error") or errors[0]["msg"]
        return JSONResponse({"detail": f"the body is not valid JSON ({where})", "errors": errors}, status_code=400)
    detail = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    if request.url.path.startswith(V2_PREFIX + "/"):  # the protocol's error: one sentence, 400
        return JSONResponse(error_body(request.url.path, detail), status_code=400)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


async def client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
    # Nobody reads this answer; it is counted and logged as 499, in one line, apart from the server's errors.
    logger.info("%s %s: the client closed the connection before its request was read", request.method,
                request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _location(loc: list) -> str:
    """("body", "images", 3) -> "body images[3]"; ("query", "top_k") -> "query top_k"."""
    if not loc:
        return "body"
    where, path = str(loc[0]), ""
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{where} {path}" if path else where


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"not found: {request.url.path}"
    headers = exc.headers
    if exc.status_code == 405:
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        headers = {**(exc.headers or {}), "Allow": allowed}
        detail = f"method {request.method} not allowed on {request.url.path}; use {allowed or 'another method'}"
    return JSONResponse(error_body(request.url.path, str(detail)), status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's 405 names only the first route that matched the
    path, and GET and DELETE on /v1/style/jobs/{id} are two routes."""
    probe = {**request.scope, "method": "\x00"}  # matches no route's methods: every path match is PARTIAL
    return ", ".join(sorted(_methods_at(request.app.router.routes, probe)))


def _methods_at(routes: list, probe: dict) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
        if included is not None:
            methods |= _methods_at(included.routes, probe)
        elif getattr(route, "methods", None) and route.matches(probe)[0] is Match.PARTIAL:
            methods |= route.methods
    return methods


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs in Starlette's outermost ServerErrorMiddleware, outside RequestContextMiddleware: the request id
    # comes from the scope (or the context variable it set) and is added to the response here.
    request_id = request.scope.get("request_id") or request_id_var.get()
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc,
                     extra={"request_id": request_id})
    return JSONResponse(error_body(request.url.path, "internal server error; the server log has the details"),
                        status_code=500,
                        headers={REQUEST_ID_HEADER: request_id})
