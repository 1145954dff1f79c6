"""Triton's own Python client (tritonclient[http], sync and asyncio) against a real server process started as
`make serve` starts it, over the committed weights: health, metadata, repository index, inference with JSON and
with binary tensor data, batches of encoded images and texts, classification, errors, API keys."""
import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.test_e2e import REPO_ROOT, running_server

pytestmark = pytest.mark.slow
HELDOUT = REPO_ROOT / "data" / "heldout"
API_KEY = "triton-test-key"
HEADERS = {"X-API-Key": API_KEY}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("triton")
    with running_server(REPO_ROOT / "weights", tmp_path, API_KEYS=API_KEY, STYLE_JOBS_ENABLED="false") as running:
        yield running[1]


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(url=server.removeprefix("http://")) as client:
        yield client


@pytest.fixture(scope="module")
def digits():
    data = np.load(HELDOUT / "mnist-test.npz")
    return [png(image) for image in data["x"][:32]], data["y"][:32]


def text(element) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def encoded(name: str, elements: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_metadata_and_index(client):
    assert client.is_server_live() and client.is_server_ready()  # open without a key, like Kubernetes probes
    metadata = client.get_server_metadata(headers=dict(HEADERS))
    assert metadata["name"] == "model-server" and "binary_tensor_data" in metadata["extensions"]
    for name in ("digits-cnn", "digits-mlp", "objects-cnn", "sentiment-lstm"):
        assert client.is_model_ready(name, headers=dict(HEADERS))
        assert client.is_model_ready(name, model_version="1", headers=dict(HEADERS))
        model = client.get_model_metadata(name, headers=dict(HEADERS))
        assert model["name"] == name and model["versions"] == ["1"]
    assert {entry["name"] for entry in client.get_model_repository_index(headers=dict(HEADERS))} >= {"digits-cnn"}


def test_a_batch_of_encoded_digits_as_binary_data(client, server, digits):
    images, labels = digits
    result = client.infer("digits-cnn", [encoded("image", images, binary=True)], headers=dict(HEADERS),
                          outputs=[triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")])
    probabilities, predicted = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.shape == (32, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9  # the real model reads MNIST digits
    v1 = httpx.post(f"{server}/v1/digits/predict", headers=dict(HEADERS), timeout=30,
                    json={"images": [base64.b64encode(image).decode() for image in images]}).json()
    assert [text(label) for label in predicted] == [r["label"] for r in v1["results"]]


def test_the_network_tensor_as_json_and_as_binary(client, digits):
    images, labels = digits
    x = np.stack([np.asarray(Image.open(io.BytesIO(i)), dtype=np.float32) for i in images[:8]])[:, None]
    x = (x / 255 - 0.1307) / 0.3081  # MNIST's normalisation, which the server's own preprocessing also ends in
    answers = []
    for binary in (False, True):
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("digits-mlp", [tensor], headers=dict(HEADERS),
                              outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)])
        answers.append(result.as_numpy("probabilities"))
    np.testing.assert_array_equal(answers[0], answers[1])
    assert answers[0].shape == (8, 10)


def test_texts_and_classification(client):
    texts = [b"a gripping, beautifully shot film", b"dull, lifeless and far too long"]
    for binary in (False, True):
        result = client.infer("sentiment", [encoded("text", texts, binary)], headers=dict(HEADERS), outputs=[
            triton.InferRequestedOutput("label", binary_data=binary),
            triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)])
        assert [text(label) for label in result.as_numpy("label")] == ["positive", "negative"]
        top = result.as_numpy("probabilities")
        assert top.shape == (2, 2) and text(top[0][0]).split(":")[1:] == ["1", "positive"]


def test_errors_reach_the_client_as_messages(client, digits):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits-cnn", [encoded("image", [b"not an image"], binary=True)], headers=dict(HEADERS))
    assert refused.value.status() == "415" and "image[0]: not an image" in refused.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope", headers=dict(HEADERS))
    assert unknown.value.status() == "404" and "digits-cnn" in unknown.value.message()
    with pytest.raises(InferenceServerException) as keyless:
        client.infer("digits-cnn", [encoded("image", digits[0][:1], binary=True)])
    assert keyless.value.status() == "401" and "API key" in keyless.value.message()


def test_the_asyncio_client(server, digits):
    async def run() -> np.ndarray:
        async with triton_aio.InferenceServerClient(url=server.removeprefix("http://")) as client:
            assert await client.is_server_ready()
            inputs = [encoded("image", digits[0][:4], binary=True)]
            results = await asyncio.gather(*(client.infer("digits", inputs, headers=dict(HEADERS)) for _ in range(8)))
            return np.stack([result.as_numpy("probabilities") for result in results])

    answers = asyncio.run(run())
    assert answers.shape == (8, 4, 10)
    np.testing.assert_allclose(answers, np.broadcast_to(answers[0], answers.shape), atol=1e-6)
