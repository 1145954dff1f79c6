"""The peer of bench.serving: this project's own model handlers served by LitServe instead of this server.

    python -m bench.litserve_app --port 8100        # needs the `bench` extra: pip install -e '.[bench]'

Each model gets a LitAPI at the same path as here (/v1/digits/predict, /v1/objects/predict,
/v1/sentiment/predict) doing the same work as this server: the handler's decode_request on the upload (multipart
field `file`) or on JSON `{"text": ...}`, its predict on a batch (LitServe's dynamic batching, max_batch_size 32,
batch_timeout 2 ms, one worker on the CPU), and its encode_response with the default top 3. Each handler is set up
exactly as the server sets it up, so both sides use the same backend (INFERENCE_BACKEND, ONNX Runtime by default
on a CPU) and the comparison measures the serving around the model, not the model.
"""
import argparse

import litserve as ls
import torch

from app.core.config import Settings
from app.serving.loading import read_manifest
from app.serving.registry import default_per_task, discover_handlers

TOP_K = 3


class HandlerAPI(ls.LitAPI):
    """One of the project's ModelHandlers behind a LitAPI."""

    def __init__(self, model_name: str, settings: Settings, **kwargs):
        super().__init__(**kwargs)
        self.model_name, self.settings = model_name, settings

    def setup(self, device) -> None:
        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)
        entry = read_manifest(self.settings.weights_dir)[self.model_name]
        self.handler = discover_handlers()[entry["architecture"]](entry, self.settings.weights_dir, self.settings)
        self.handler.setup(torch.device("cpu"))

    def decode_request(self, request):
        if self.handler.input_kind == "image":
            return self.handler.decode_request(request["file"].file.read())
        return self.handler.decode_request(request["text"])

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, batch: list) -> list:
        return list(self.handler.predict(batch))

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output) -> dict:
        return {"model": self.model_name, **self.handler.encode_response(output, TOP_K)}


def apis(settings: Settings, max_batch_size: int, batch_timeout: float) -> list[HandlerAPI]:
    """One LitAPI per task, serving the task's default model, as this server does without ?model=."""
    entries = read_manifest(settings.weights_dir)
    handlers = {name: discover_handlers()[entry["architecture"]](entry, settings.weights_dir, settings)
                for name, entry in entries.items()}
    return [HandlerAPI(name, settings, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                       api_path=f"/v1/{task}/predict")
            for task, name in default_per_task(handlers).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    args = parser.parse_args()
    settings = Settings()
    server = ls.LitServer(apis(settings, args.max_batch_size, args.batch_timeout), accelerator="cpu",
                          workers_per_device=1, timeout=30)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
