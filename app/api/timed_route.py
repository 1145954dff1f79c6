"""TimedRoute: the APIRoute class of the synchronous predict routes; REQUEST_TIMEOUT_S bounds each handler (504).

On timeout the handler is cancelled; its queued batcher items are skipped (their futures are cancelled). Latency
per model is recorded by the served model itself (ServedModel.timed)."""
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.api.services import services_of
from app.core.errors import APIError


class TimedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def timed_handler(request: Request) -> Response:
            timeout_s = services_of(request.app).settings.request_timeout_s
            try:
                async with asyncio.timeout(timeout_s) as deadline:
                    return await handler(request)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise APIError(f"the request took longer than {timeout_s:g} s (REQUEST_TIMEOUT_S); retry "
                               "later or send fewer inputs", 504) from None

        return timed_handler
