"""Request and response bodies. Limits that come from Settings arrive through the validation context."""
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError


def _check_batch_size(items: list, info: ValidationInfo) -> list:
    limit = (info.context or {}).get("max_batch_items")
    if limit is not None and len(items) > limit:
        raise PydanticCustomError("too_long", "List should have at most {max_length} items, not {actual_length}",
                                  {"max_length": limit, "actual_length": len(items)})
    return items


def _check_text(text: str, info: ValidationInfo) -> str:
    if not text.strip():
        raise PydanticCustomError("blank_text", "Text is empty or only whitespace")
    limit = (info.context or {}).get("max_text_chars")
    if limit is not None and len(text) > limit:
        raise PydanticCustomError("text_too_long", "Text is {length} characters; the limit is {limit} "
                                  "(MAX_TEXT_CHARS)", {"length": len(text), "limit": limit})
    return text


ValidText = Annotated[str, AfterValidator(_check_text)]


class OneOrMany(BaseModel):
    """A body carrying either one input (`single_field`) or a list of them (`batch_field`), never both."""

    single_field: ClassVar[str]
    batch_field: ClassVar[str]

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in (self.single_field, self.batch_field) if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError("one_of", "Send exactly one of '{single}' or '{batch}'",
                                      {"single": self.single_field, "batch": self.batch_field})
        return self

    @property
    def is_batch(self) -> bool:
        return getattr(self, self.batch_field) is not None

    @property
    def inputs(self) -> list:
        return getattr(self, self.batch_field) if self.is_batch else [getattr(self, self.single_field)]


class ImagePayload(OneOrMany):
    single_field = "image"
    batch_field = "images"

    image: str | None = Field(None, description="one image: base64 or a data: URL",
                              examples=["data:image/png;base64,iVBORw0KGgo..."])
    images: Annotated[list[str], AfterValidator(_check_batch_size)] | None = Field(
        None, min_length=1, description="1 to MAX_BATCH_ITEMS (64) images, each like `image`")


class TextPayload(OneOrMany):
    single_field = "text"
    batch_field = "texts"

    text: ValidText | None = Field(None, description="one sentence or paragraph, at most MAX_TEXT_CHARS (5000)",
                                   examples=["a gripping, beautifully shot film"])
    texts: Annotated[list[ValidText], AfterValidator(_check_batch_size)] | None = Field(
        None, min_length=1, description="1 to MAX_BATCH_ITEMS (64) texts, each like `text`")


class ScoredLabel(BaseModel):
    label: str
    score: float = Field(description="probability, rounded to 6 decimals")


class Prediction(BaseModel):
    label: str = Field(description="the most likely class")
    score: float
    top: list[ScoredLabel] = Field(description="the top_k classes, most likely first")


class PredictionResponse(BaseModel):
    model: str
    label: str = Field(description="the most likely class")
    score: float
    top: list[ScoredLabel] = Field(description="the top_k classes, most likely first")


class BatchPredictionResponse(BaseModel):
    model: str
    results: list[Prediction] = Field(description="one per input, in order")


class Calibration(BaseModel):
    """How the model's scores were calibrated (training.calibrate; docs/calibration.md)."""

    method: Literal["temperature"] = Field(description="scores are softmax(logits / temperature)")
    temperature: float = Field(description="fitted on `split` by minimising the negative log-likelihood")
    split: str = Field(description="the held-out data the temperature was fitted on (never trained on, not the "
                                   "test set)")
    split_size: int | None = None
    ece_split: str | None = Field(None, description="where the ECE figures were measured: the test set")
    ece_size: int | None = None
    bins: int = Field(description="equal-width confidence bins of the expected calibration error")
    ece_before: float = Field(description="expected calibration error of the raw softmax on `ece_split`")
    ece_after: float = Field(description="expected calibration error of the served scores on `ece_split`")
    nll_before: float | None = None
    nll_after: float | None = None
    ece_noise_floor: float | None = Field(None, description="mean ECE a perfectly calibrated model with the served "
                                                            "scores would show on `ece_size` inputs (sampling noise)")
    low_confidence_below: float = Field(description="below this score the answer is shown as uncertain: on "
                                                    "`split`, such answers were right less than `sure_accuracy` "
                                                    "of the time")
    sure_accuracy: float | None = None


Backend = Literal["torch", "onnxruntime"]


class Inference(BaseModel):
    """What runs the model's forward passes (INFERENCE_BACKEND; app/serving/backends.py)."""

    backend: Backend
    requested: Literal["auto", "torch", "onnxruntime"] = Field(description="the INFERENCE_BACKEND setting")
    reason: str = Field(description="why this backend: the setting, CUDA, no ONNX export, or auto's measurement")
    max_abs_diff: float | None = Field(None, description="largest absolute logit difference between ONNX Runtime "
                                       "and PyTorch on the fixed held-out check inputs at startup (<= 1e-4)")
    onnxruntime_threads: int | None = None
    ms_per_batch: dict[str, dict[str, float]] | None = Field(
        None, description="auto on the CPU: fastest ms per forward pass measured at startup, per backend and batch "
                          "size")
    onnxruntime_time_ratio: float | None = Field(None, description="auto: ONNX Runtime's time over PyTorch's "
                                                 "(geometric mean over the batch sizes); below 1 picks ONNX Runtime")


class Batching(BaseModel):
    max_size: int = Field(description="most inputs per forward pass; 1: no batching")
    max_wait_ms: float = Field(description="how long a forming batch waits for more inputs")


class ModelInfo(BaseModel):
    name: str
    task: str
    architecture: str
    input_kind: str
    device: str
    loaded: bool
    default: bool
    classes: list[str]
    parameters: int | None
    sha256: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    hyperparameters: dict[str, Any]
    trained_at: str | None
    torch_version: str | None
    training_time_s: float | None
    trained_on: str | None
    calibration: Calibration | None = Field(None, description="score calibration; null when the scores are the "
                                                              "raw softmax")
    backend: Backend | None = Field(None, description="what runs the forward passes; null until loaded")
    inference: Inference | None = Field(None, description="the backend and why; null until loaded")
    batching: Batching = Field(description="how concurrent inputs share forward passes (MODEL_BATCHING, else "
                                           "BATCH_MAX_SIZE and BATCH_MAX_WAIT_MS)")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed"] = Field(description="the classifiers (drives the status code)")
    device: str
    models: list[str] = Field(description="models loaded so far")
    backends: dict[str, Backend] | None = Field(None, description="the backend each loaded model predicts with")
    error: str | None = None
    style: Literal["ready", "starting", "failed", "unavailable", "disabled"] | None = Field(
        None, description="style jobs: ready (a worker has VGG-19 loaded and the device measured), starting, "
        "failed (the engine cannot load, or the worker keeps dying), unavailable (no worker runs jobs, or the job "
        "store is unreachable), disabled (STYLE_JOBS_ENABLED=false); does not change the status code")
    style_detail: str | None = Field(None, description="why style is not ready")


class ErrorBody(BaseModel):
    detail: str


class ValidationErrorBody(BaseModel):
    detail: str = Field(examples=["query top_k: Input should be less than or equal to 10"])
    errors: list[dict[str, Any]] | None = Field(
        None, description="the failed checks (type, loc, msg) when the request failed schema validation; absent "
                          "when the check happened outside the schema (e.g. a missing multipart file field)")


_ERROR_DESCRIPTIONS = {
    400: "undecodable input (truncated image, bad base64, text not UTF-8)",
    404: "unknown model or a model of another task",
    413: "body over MAX_UPLOAD_BYTES or image over MAX_IMAGE_PIXELS",
    415: "wrong Content-Type or a file that is not a supported image",
    422: "invalid query or body",
    503: "models still loading, or loading failed",
    504: "the request took longer than REQUEST_TIMEOUT_S",
}


def error_responses(*codes: int) -> dict[int, dict]:
    """OpenAPI `responses` for the error statuses a route can answer."""
    return {code: {"model": ValidationErrorBody if code == 422 else ErrorBody,
                   "description": _ERROR_DESCRIPTIONS[code]} for code in codes}
