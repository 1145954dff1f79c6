"""Image classification routes; /v1/digits and /v1/objects come from the same factory."""
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from app.api.deps import DecodeLimiterDep, SettingsDep, TopKQuery, checked_top_k, served_model_for
from app.api.inference import Inputs, media_type, parse_body, payload_inputs, predict_all, unsupported
from app.api.schemas import BatchPredictionResponse, ImagePayload, PredictionResponse, error_responses
from app.api.routes import versioned_router
from app.core.config import Settings
from app.api.timed_route import TimedRoute
from app.core.errors import Unprocessable
from app.serving.registry import ServedModel
from preprocessing.decoding import decode_base64_image

ACCEPTED = "multipart/form-data with a 'file' field or application/json"

IMAGE_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "PNG, JPEG, GIF, BMP or WebP image"}},
        }},
        "application/json": {"schema": ImagePayload.model_json_schema()},
    },
}


def image_router(task: str, what: str) -> APIRouter:
    router = versioned_router(task, tags=[task], route_class=TimedRoute)
    served_model = served_model_for(task)

    @router.post(
        "/predict", response_model=PredictionResponse | BatchPredictionResponse, summary=f"Classify {what}",
        description="Send one image as multipart/form-data (field `file`), one base64 image or data: URL as "
                    "JSON `{\"image\": ...}`, or several as JSON `{\"images\": [...]}`; a batch gets "
                    "`results` in the order sent.",
        openapi_extra={"requestBody": IMAGE_REQUEST_BODY},
        responses=error_responses(400, 404, 413, 415, 422, 503, 504),
    )
    async def predict(request: Request, settings: SettingsDep, limiter: DecodeLimiterDep,
                      served: Annotated[ServedModel, Depends(served_model)],
                      top_k: TopKQuery = None) -> JSONResponse:
        top_k = checked_top_k(served, top_k)
        inputs = await read_image_inputs(request, settings)
        handler = served.handler

        def decode(raw: bytes | str):
            return handler.decode_request(decode_base64_image(raw) if isinstance(raw, str) else raw)

        return await predict_all(served, inputs, decode, top_k, limiter)

    return router


async def read_image_inputs(request: Request, settings: Settings) -> Inputs:
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        return Inputs([await _uploaded_file(request)], "file", is_batch=False)
    if content_type == "application/json":
        return payload_inputs(parse_body(ImagePayload, await request.body(), settings))
    raise unsupported(content_type, ACCEPTED)


async def _uploaded_file(request: Request) -> bytes:
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            problem = "is not a file" if upload is not None else "is missing"
            raise Unprocessable(f"multipart field 'file' {problem}; send the image as a file field named 'file'")
        return await upload.read()
