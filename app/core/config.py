"""All runtime settings, read from the environment (or a .env file) in one place."""
from functools import lru_cache
import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
API_PREFIX = "/v1"  # every versioned route: applied by app.api.routes.versioned_router, protected by API_KEYS
V2_PREFIX = "/v2"  # the Open Inference Protocol (app/api/v2/): its errors are {"error": ...}, not {"detail": ...}
V2_HEALTH_PREFIX = f"{V2_PREFIX}/health"  # its liveness and readiness probes, open like /healthz and /readyz


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    weights_dir: Path = Field(PROJECT_ROOT / "weights", description="checkpoints and manifest.json")
    data_dir: Path = Field(PROJECT_ROOT / "var", description="runtime data written by the server")

    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest request body accepted")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest decoded image (width x height)")
    max_batch_items: int = Field(64, ge=1, description="most inputs in one batch request")
    max_text_chars: int = Field(5000, ge=1, description="longest text accepted for sentiment")
    max_request_chars: int = Field(20_000, ge=1, description="most characters in all the texts of one sentiment "
                                   "request (a batch of long texts holds the model for seconds): 413 beyond")

    batch_max_size: int = Field(32, ge=1, description="most inputs per forward pass; 1 turns batching off")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    model_batching: str = Field("", description="per-model batching over the two above, comma-separated "
                                "NAME=MAX_SIZE or NAME=MAX_SIZE/MAX_WAIT_MS, e.g. 'objects-cnn=8/4,digits-mlp=1'")
    decode_concurrency: int = Field(4, ge=1, description="inputs decoded at once across all requests; bounds "
                                    "the memory that many large images can take")
    inline_decode_pixels: int = Field(65_536, ge=0, description="images up to this many pixels are decoded on "
                                      "the event loop (cheaper than a thread hop); larger ones in worker threads")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default")
    inference_backend: str = Field("auto", pattern=r"(?i)^(auto|torch|onnxruntime)$", description="what runs the "
                                   "classifiers' forward passes: torch; onnxruntime (the committed ONNX exports, on "
                                   "the CPU only); auto: ONNX Runtime per model where it is measured faster at "
                                   "startup on the CPU, torch otherwise and always on CUDA")
    ready_timeout_s: float = Field(120.0, gt=0, description="with create_app(wait_until_ready=True) (tests, "
                                   "app.testing): seconds the models and the first style worker get to load "
                                   "before the startup fails with StartupError")
    log_level: str = Field("info", pattern=r"(?i)^(debug|info|warning|error)$", description="the app's log level")
    log_format: str = Field("text", pattern=r"(?i)^(text|json)$", description="text, or json: one JSON object "
                            "per log line")
    api_keys: str = Field("", description="comma-separated API keys, each KEY, NAME:KEY or NAME:KEY:admin; when "
                          "set, every /v1 route needs one (Authorization: Bearer <key> or X-API-Key: <key>), style "
                          "jobs belong to the key that created them (an admin key sees all) and logs show the "
                          "name, never the key; empty turns auth off")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS; empty: no CORS headers")
    request_timeout_s: float = Field(30.0, gt=0, description="seconds a synchronous predict request may take "
                                     "before it is answered 504")

    # The HTTP server and its connections (app/server/, app/core/uploads.py); `python -m app` reads these.
    host: str = Field("127.0.0.1", description="address `python -m app` listens on (the image: 0.0.0.0)")
    port: int = Field(8000, ge=0, le=65535, description="port `python -m app` listens on")
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024, description="largest request line plus "
                                  "headers; more is answered 431 and the connection closed")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds a request line and headers may take to "
                                    "arrive once they begin; then 408 and the connection closed")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="seconds an idle connection stays open: a new "
                                        "one that sends nothing, or one between two requests")
    body_timeout_s: float = Field(30.0, gt=0, description="seconds a request body may go without a byte "
                                  "arriving; then 408 and the connection closed")
    min_body_rate_bytes_s: int = Field(1024, ge=0, description="bytes/s a request body must average once it has "
                                       "had BODY_TIMEOUT_S to start (a body of N bytes gets BODY_TIMEOUT_S + N / "
                                       "this seconds); slower is answered 408 and the connection closed; 0: off")
    max_concurrent_uploads: int = Field(16, ge=1, description="large request bodies (over LARGE_UPLOAD_BYTES) "
                                        "received at once; one more is answered 503 with Retry-After")
    large_upload_bytes: int = Field(1024 * 1024, ge=0, description="a request body over this many bytes "
                                    "(declared or streamed) counts against MAX_CONCURRENT_UPLOADS")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM, seconds in-flight requests get to "
                                    "finish; then their connections are closed and the app shuts down")

    style_jobs_enabled: bool = Field(True, description="serve /v1/style (style-transfer jobs run by worker processes)")
    job_workers: int = Field(1, ge=0, description="style-transfer worker processes, one job at a time each; "
                             "0 queues jobs without running them")
    style_threads: int = Field(0, ge=0, description="torch threads of each embedded style worker; 0: on the CPU, one "
                               "fewer than the CPUs the server may use (at least 1), so predicts keep a core; on "
                               "CUDA, TORCH_THREADS (README, bench.contention)")
    worker_nice: int = Field(0, ge=0, le=19, description="the style workers' scheduling niceness (Unix nice); "
                             "above 0 predicts come first on a shared CPU, at a cost to the job (README, "
                             "bench.contention)")
    instant_style_concurrency: int = Field(1, ge=1, description="POST /v1/style/instant requests computed at once")
    instant_style_queue: int = Field(2, ge=0, description="instant-style requests waiting for a turn; one more is "
                                     "answered 429 with Retry-After")
    instant_style_precision: str = Field("auto", pattern=r"^(auto|float32|bfloat16)$",
                                         description="instant style's arithmetic: auto (bfloat16 on a CPU that "
                                                     "has it natively, else float32), float32 or bfloat16")
    max_queued_jobs: int = Field(16, ge=1, description="most style jobs waiting; more are refused with 429")
    max_queued_jobs_per_owner: int = Field(4, ge=0, description="with API_KEYS: most style jobs one key may have "
                                           "waiting (429 beyond); 0: no per-key cap")
    max_job_pixel_steps: int = Field(1024 * 1024 * 250, ge=1, description="most output pixels x steps in one style "
                                     "job (default: 1024x1024 px at 250 steps); 422 beyond, naming the largest "
                                     "steps and size allowed")
    streams_per_job: int = Field(16, ge=1, description="most open event streams (GET .../events) on one style job "
                                 "in this process; more are refused with 429")
    max_event_streams: int = Field(256, ge=1, description="most open event streams in all in this process; more "
                                   "are refused with 429")
    result_ttl: float = Field(86400, gt=0, description="seconds a finished style job (record, result) is kept")
    job_max_attempts: int = Field(2, ge=1, description="times a style job is started before a job whose worker "
                                  "died (or whose server stopped) is failed: 2 = re-queued once")
    style_default_size: int = Field(0, ge=0, le=2048, description="output size of a job that names none; 0: 512 px "
                                    "when DEVICE is CUDA, 256 px on CPU (set it where the API replicas run on CPU "
                                    "and the workers on GPUs)")
    job_backend: str = Field("embedded", pattern=r"^(embedded|redis)$", description="embedded: SQLite in DATA_DIR "
                             "and worker processes of this server; redis: jobs in Redis (REDIS_URL), run by "
                             "`python -m app.worker` on any host")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="the Redis of JOB_BACKEND=redis")
    redis_namespace: str = Field("model-server", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of every "
                                 "Redis key this service writes (several deployments can share one Redis)")
    job_heartbeat_timeout_s: float = Field(30.0, ge=1, description="JOB_BACKEND=redis: a worker silent this long "
                                           "is dead; its job is retried elsewhere (or failed after "
                                           "JOB_MAX_ATTEMPTS)")
    style_result_max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="JOB_BACKEND=redis: largest result "
                                        "PNG stored in Redis; a job whose result is larger fails with a message")
    style_vgg_weights: Path = Field(PROJECT_ROOT / "weights" / "vgg19_features_0-16.pth",
                                    description="VGG-19 features state_dict for style transfer (the shipped "
                                    "conv1_1..conv3_4 file, or a full VGG-19 features file)")

    # Lists are read from plain strings: pydantic-settings would otherwise expect JSON in list env vars.
    @property
    def api_key_list(self) -> list[str]:
        return _split(self.api_keys)

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        from app.core.security import parse_api_keys

        parse_api_keys(_split(value))  # a malformed entry stops the server at start, naming the entry
        return value

    @field_validator("model_batching")
    @classmethod
    def _check_model_batching(cls, value: str) -> str:
        parse_model_batching(value)
        return value

    @property
    def model_batching_map(self) -> dict[str, tuple[int, float | None]]:
        return parse_model_batching(self.model_batching)

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)


def parse_model_batching(value: str) -> dict[str, tuple[int, float | None]]:
    """'a=8/4,b=1' -> {'a': (8, 4.0), 'b': (1, None)}; ValueError with the entry at fault."""
    parsed: dict[str, tuple[int, float | None]] = {}
    for item in _split(value):
        name, _, spec = item.partition("=")
        size, _, wait = spec.partition("/")
        try:
            max_size, max_wait = int(size), (float(wait) if wait else None)
        except ValueError:
            max_size = max_wait = None
        if not name.strip() or max_size is None or max_size < 1 or (max_wait is not None and not 0 <= max_wait < 1e4):
            raise ValueError(f"MODEL_BATCHING entry {item!r}: write NAME=MAX_SIZE or NAME=MAX_SIZE/MAX_WAIT_MS, "
                             "MAX_SIZE at least 1, MAX_WAIT_MS from 0 to 10000")
        parsed[name.strip()] = (max_size, max_wait)
    return parsed


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
