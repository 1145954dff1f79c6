"""Python client of the model server: digits, objects and sentiment predictions, and style-transfer jobs.

    from model_server_client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        client.predict_digit("seven.png").label                       # '7'
        client.sentiment(["a delight", "dull"])                       # [Prediction(...), Prediction(...)]
        client.style("cat.jpg", preset="starry_night", size=256).wait(progress=True).save("out.png")

AsyncClient has the same methods, to be awaited. The only dependency is httpx.
"""
__version__ = "0.1.0"

from model_server_client.aio import AsyncClient, AsyncStyleJob  # noqa: E402
from model_server_client.client import Client, StyleJob  # noqa: E402
from model_server_client.errors import (APIError, AuthenticationError, BadRequest, Conflict, Gone,  # noqa: E402
                                        InputError, InsufficientStorage, JobCancelled, JobError, JobFailed,
                                        ModelServerError, NotFound, PayloadTooLarge, PermissionDenied, RateLimited,
                                        ServerError, ServiceUnavailable, TransportError, UnsupportedMediaType,
                                        ValidationError, WaitTimeout)
from model_server_client.images import encode_png  # noqa: E402
from model_server_client.progress import ProgressBar  # noqa: E402
from model_server_client.retry import RetryPolicy  # noqa: E402
from model_server_client.datatypes import (JobInfo, ModelInfo, Prediction, Preset, Progress, RetryEvent,  # noqa: E402
                                       ScoredLabel, StyleEvent, WaitReport)

__all__ = [
    "__version__", "Client", "AsyncClient", "StyleJob", "AsyncStyleJob", "RetryPolicy", "ProgressBar",
    "encode_png", "Prediction", "ScoredLabel", "ModelInfo", "JobInfo", "Progress", "Preset", "StyleEvent",
    "WaitReport", "RetryEvent", "ModelServerError", "TransportError", "InputError", "WaitTimeout", "JobError",
    "JobFailed", "JobCancelled", "APIError", "BadRequest", "AuthenticationError", "PermissionDenied", "NotFound",
    "Conflict", "Gone", "PayloadTooLarge", "UnsupportedMediaType", "ValidationError", "RateLimited", "ServerError",
    "ServiceUnavailable", "InsufficientStorage",
]
