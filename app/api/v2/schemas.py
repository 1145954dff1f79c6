"""The Open Inference Protocol's JSON objects (KServe's rest_predict_v2.yaml), as pydantic models.

Requests are validated with them; responses are built as plain dicts (a big tensor is not re-validated) and the
models document them in the OpenAPI schema.
"""
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]
Dimension = Annotated[int, Field(ge=0)]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="variable dimensions are -1")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[Dimension]
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(None, description="row-major, nested or flat; absent when `parameters.binary_data_size` "
                                        "says the tensor follows the JSON as binary data")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


def inline_schema(model: type[BaseModel]) -> dict:
    """`model`'s JSON schema with its nested models written in place: a request body given through openapi_extra
    is not registered under components, so a $ref would point at nothing (ReDoc then refuses the whole page)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


class ErrorResponse(BaseModel):
    error: str


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": meaning} for status, meaning in {
    400: "a malformed request, or one the model cannot take", 401: "a missing or invalid API key (API_KEYS)",
    404: "an unknown model or version", 413: "a body over MAX_UPLOAD_BYTES or an image over MAX_IMAGE_PIXELS",
    503: "the models are still loading", 504: "the request took longer than REQUEST_TIMEOUT_S",
}.items()}
