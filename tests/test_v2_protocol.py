"""The Open Inference Protocol (KServe V2) over HTTP/REST, in-process: the spec's own schemas and examples, the
binary tensor data and classification extensions, answers equal to /v1's, and every malformed request a clear
{"error": ...} 4xx. Real clients (tritonclient) against a real server are in tests/test_v2_tritonclient.py."""
import base64
import io
import json
import re
import struct
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from PIL import Image

from app.api.v2.tensors import bytes_to_binary, from_binary, from_json, split_bytes_elements
from app.core.errors import BadInput
from app.main import create_app
from tests.conftest import make_settings, wait_until_ready

SPEC = yaml.safe_load((Path(__file__).parent / "data/open-inference-protocol/rest_predict_v2.yaml").read_text())
HELDOUT = Path(__file__).resolve().parents[1] / "data" / "heldout"
HEADER = "Inference-Header-Content-Length"
MODELS = ["digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"]


def conforms(document, schema_name: str) -> None:
    """`document` is valid against the spec's component schema (its $refs resolved inside the spec)."""
    schema = {**SPEC["components"]["schemas"][schema_name], "components": SPEC["components"]}
    jsonschema.validate(document, schema)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mnist_pngs() -> list[bytes]:
    images = np.load(HELDOUT / "mnist-test.npz")["x"][:12]
    return [png(255 - image) for image in images]  # dark ink on white paper, as a scan would be


@pytest.fixture(scope="module")
def cifar_pngs() -> list[bytes]:
    return [png(image) for image in np.load(HELDOUT / "cifar-test.npz")["x"][:6]]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [str(text) for text in np.load(HELDOUT / "sst2-dev.npz")["texts"][:8]]


def binary_request(inputs: list[dict], blobs: list[bytes], **extra) -> tuple[bytes, dict]:
    """A request with the binary tensor data extension: JSON header, then each input's bytes in order."""
    for entry, blob in zip(inputs, blobs):
        entry.setdefault("parameters", {})["binary_data_size"] = len(blob)
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(blobs), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict, dict[str, bytes]]:
    """A binary response -> its JSON header and each binary output's bytes."""
    length = int(response.headers[HEADER])
    header, rest = json.loads(response.content[:length]), response.content[length:]
    blobs, offset = {}, 0
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]], offset = rest[offset:offset + size], offset + size
    assert offset == len(rest)
    return header, blobs


def bytes_input(name: str, values: list[str]) -> dict:
    return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def probabilities(document: dict) -> np.ndarray:
    output = next(o for o in document["outputs"] if o["name"] == "probabilities")
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def v1_scores(client, task: str, model: str, payload: dict) -> list[dict]:
    response = client.post(f"/v1/{task}/predict", params={"model": model}, json=payload)
    assert response.status_code == 200, response.text
    return response.json()["results"]


# ------------------------------------------------------------------------------------------ health, metadata

def test_server_metadata_and_health(client):
    metadata = client.get("/v2").json()
    conforms(metadata, "metadata_server_response")
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])
    assert client.get("/v2/").json() == metadata
    for path in ("/v2/health/live", "/v2/health/ready"):
        response = client.get(path)
        assert response.status_code == 200 and response.content == b""  # the spec: the body should be empty


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_and_ready(client, model):
    for base in (f"/v2/models/{model}", f"/v2/models/{model}/versions/1"):
        metadata = client.get(base).json()
        conforms(metadata, "metadata_model_response")
        assert metadata["name"] == model and metadata["versions"] == ["1"]
        assert metadata["platform"] in ("pytorch_libtorch", "onnxruntime_onnx")
        assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
        assert client.get(f"{base}/ready").status_code == 200
    inputs = {i["name"]: i for i in metadata["inputs"]}
    if model.startswith("sentiment"):
        assert inputs["text"]["datatype"] == "BYTES" and inputs["ids"]["shape"] == [-1, -1]
    else:
        assert inputs["image"]["shape"] == [-1] and inputs["x"]["datatype"] == "FP32"
        assert inputs["x"]["shape"][0] == -1 and -1 not in inputs["x"]["shape"][1:]


def test_task_names_alias_their_default_model(client):
    assert client.get("/v2/models/digits").json()["name"] == "digits-cnn"


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/digits-cnn/versions/2",
                                  "/v2/models/digits-cnn/versions/2/ready"])
def test_unknown_models_and_versions_are_404_errors(client, path):
    response = client.get(path)
    assert response.status_code == 404
    conforms(response.json(), "metadata_model_error_response")
    assert "digits-cnn" in response.json()["error"]  # names what there is


def test_unknown_v2_routes_are_protocol_errors(client):
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and response.json() == {"error": "not found: /v2/nothing"}
    response = client.delete("/v2/models/digits-cnn")
    assert response.status_code == 405 and "GET" in response.json()["error"]


def test_repository_index(client):
    index = client.post("/v2/repository/index").json()
    assert {entry["name"] for entry in index} == set(MODELS)
    assert {entry["state"] for entry in index} == {"READY"}


# ---------------------------------------------------------------------------------------------- inference

def test_images_as_base64_bytes_match_v1(client, mnist_pngs):
    request = {"id": "batch-1", "inputs": [bytes_input("image", [b64(p) for p in mnist_pngs])]}
    response = client.post("/v2/models/digits-cnn/infer", json=request)
    assert response.status_code == 200, response.text
    document = response.json()
    conforms(document, "inference_response")
    assert document["id"] == "batch-1" and document["model_name"] == "digits-cnn"
    v1 = v1_scores(client, "digits", "digits-cnn", {"images": [b64(p) for p in mnist_pngs]})
    labels = next(o for o in document["outputs"] if o["name"] == "label")
    assert labels["shape"] == [len(mnist_pngs)] and labels["data"] == [r["label"] for r in v1]
    probs = probabilities(document)
    assert probs.shape == (len(mnist_pngs), 10)
    np.testing.assert_allclose(probs.max(axis=1), [r["score"] for r in v1], atol=1e-6)


def test_the_network_tensor_gives_the_same_answer_as_the_encoded_image(client, cifar_pngs):
    handler = client.app.state.services.registry.handlers["objects-resnet"]
    tensors = np.stack([handler.decode_request(p).numpy() for p in cifar_pngs])
    as_tensor = client.post("/v2/models/objects-resnet/infer", json={"inputs": [{
        "name": "x", "shape": list(tensors.shape), "datatype": "FP32", "data": tensors.tolist()}]})  # nested data
    as_files = client.post("/v2/models/objects-resnet/infer",
                           json={"inputs": [bytes_input("image", [b64(p) for p in cifar_pngs])]})
    assert as_tensor.status_code == as_files.status_code == 200, as_tensor.text
    np.testing.assert_allclose(probabilities(as_tensor.json()), probabilities(as_files.json()), atol=1e-6)


def test_binary_tensor_data_in_both_directions(client, mnist_pngs):
    tensors = np.stack([client.app.state.services.registry.handlers["digits-mlp"].decode_request(p).numpy()
                        for p in mnist_pngs]).astype("<f4")
    body, headers = binary_request([{"name": "x", "shape": list(tensors.shape), "datatype": "FP32"}],
                                   [tensors.tobytes()], parameters={"binary_data_output": True})
    response = client.post("/v2/models/digits-mlp/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, blobs = split_response(response)
    probs = np.frombuffer(blobs["probabilities"], dtype="<f4").reshape(len(mnist_pngs), 10)
    labels = split_bytes_elements("label", blobs["label"])
    json_answer = client.post("/v2/models/digits-mlp/infer",
                              json={"inputs": [bytes_input("image", [b64(p) for p in mnist_pngs])]}).json()
    np.testing.assert_allclose(probs, probabilities(json_answer), atol=1e-6)
    assert [label.decode() for label in labels] == next(o for o in json_answer["outputs"] if o["name"] == "label")["data"]


def test_encoded_images_as_binary_bytes_elements(client, mnist_pngs):
    body, headers = binary_request([{"name": "image", "shape": [len(mnist_pngs)], "datatype": "BYTES"}],
                                   [bytes_to_binary(mnist_pngs)],
                                   outputs=[{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}])
    response = client.post("/v2/models/digits-cnn/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, blobs = split_response(response)
    assert [o["name"] for o in header["outputs"]] == ["label", "probabilities"]  # as requested, in that order
    assert "data" in header["outputs"][0] and set(blobs) == {"probabilities"}  # label in JSON, the rest binary


def test_texts_and_token_ids_match_v1(client, texts):
    response = client.post("/v2/models/sentiment/infer", json={"inputs": [bytes_input("text", texts)]})
    assert response.status_code == 200, response.text
    v1 = v1_scores(client, "sentiment", "sentiment-lstm", {"texts": texts})
    np.testing.assert_allclose(probabilities(response.json()).max(axis=1), [r["score"] for r in v1], atol=1e-6)
    handler = client.app.state.services.registry.handlers["sentiment-lstm"]
    batch = handler.collate([handler.decode_request(t) for t in texts])
    by_ids = client.post("/v2/models/sentiment-lstm/infer", json={"inputs": [
        {"name": "ids", "shape": list(batch["ids"].shape), "datatype": "INT64", "data": batch["ids"].flatten().tolist()},
        {"name": "lengths", "shape": [len(texts)], "datatype": "INT32", "data": batch["lengths"].tolist()}]})
    assert by_ids.status_code == 200, by_ids.text
    np.testing.assert_allclose(probabilities(by_ids.json()), probabilities(response.json()), atol=1e-6)


def test_classification_extension(client, cifar_pngs):
    request = {"inputs": [bytes_input("image", [b64(p) for p in cifar_pngs])],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
    document = client.post("/v2/models/objects-resnet/infer", json=request).json()
    (output,) = document["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [len(cifar_pngs), 3]
    full = probabilities(client.post("/v2/models/objects-resnet/infer",
                                     json={"inputs": request["inputs"]}).json())
    classes = client.app.state.services.registry.handlers["objects-resnet"].classes
    for row, start in enumerate(range(0, len(output["data"]), 3)):
        entries = [entry.split(":") for entry in output["data"][start:start + 3]]
        indices = [int(index) for _, index, _ in entries]
        assert indices == list(np.argsort(-full[row], kind="stable")[:3])
        assert [label for _, _, label in entries] == [classes[i] for i in indices]
        np.testing.assert_allclose([float(value) for value, _, _ in entries], full[row][indices], rtol=1e-5)


def test_the_specs_examples_are_answered_in_the_specs_shapes(client):
    """required_api.md's inference example and the classification extension's, replayed as written: this
    server has no 'mymodel' (404) and its models take other inputs (400); every answer is the error object."""
    example = SPEC["components"]["schemas"]["inference_request"]["x-examples"]["Example 1"]
    classification = {"id": "42", "inputs": [{"name": "input0", "shape": [2, 2], "datatype": "UINT32",
                                              "data": [1, 2, 3, 4]}],
                      "outputs": [{"name": "output0", "parameters": {"classification": 2}}]}
    for request in (example, classification):
        conforms(request, "inference_request")
        missing = client.post("/v2/models/mymodel/infer", json=request)
        assert missing.status_code == 404
        conforms(missing.json(), "inference_error_response")
        wrong = client.post("/v2/models/digits-cnn/infer", json=request)
        assert wrong.status_code == 400
        conforms(wrong.json(), "inference_error_response")
        error = wrong.json()["error"]  # Example 1 itself gives shape [3] with one element: that is said first
        assert ("'image'" in error and "'x'" in error) or "shape [3] holds 3 elements but 'data' has 1" in error


# ------------------------------------------------------------------------------------------ refusals

IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES"}
X = {"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32"}


def refusals(png_b64: str):
    """(request body, headers, status, words the error must contain)."""
    good = {**IMAGE, "data": [png_b64]}
    yield b"{not json", {}, 400, "not valid JSON"
    yield b"[1, 2]", {}, 400, "JSON object"
    yield json.dumps({"inputs": []}).encode(), {}, 400, "inputs"
    yield json.dumps({"inputs": [{**good, "shape": [-1]}]}).encode(), {}, 400, "shape"
    yield json.dumps({"inputs": [{**good, "shape": [2]}]}).encode(), {}, 400, "2 elements"
    yield json.dumps({"inputs": [{**good, "datatype": "FLOAT"}]}).encode(), {}, 400, "unknown datatype"
    yield json.dumps({"inputs": [{**good, "datatype": "FP32"}]}).encode(), {}, 400, "numbers"
    yield json.dumps({"inputs": [{**IMAGE, "data": ["bm90IGFuIGltYWdl"]}]}).encode(), {}, 415, "image[0]: not an image"
    yield json.dumps({"inputs": [good, good]}).encode(), {}, 400, "twice"
    yield json.dumps({"inputs": [{**X, "data": [0.5] * 783}]}).encode(), {}, 400, "784 elements"
    yield json.dumps({"inputs": [{**X, "shape": [1, 28, 28], "data": [0.5] * 784}]}).encode(), {}, 400, "shape"
    yield b'{"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [NaN' + \
        b', 0.5' * 783 + b']}]}', {}, 400, "NaN"
    yield json.dumps({"inputs": [{**X, "datatype": "INT64", "data": [0] * 784}]}).encode(), {}, 400, "must be FP32"
    yield json.dumps({"inputs": [{**X, "datatype": "BF16", "data": [0] * 784}]}).encode(), {}, 400, "BF16"
    yield json.dumps({"inputs": [good], "outputs": [{"name": "logits"}]}).encode(), {}, 400, "unknown output"
    yield json.dumps({"inputs": [good], "outputs": [{"name": "label"}, {"name": "label"}]}).encode(), {}, 400, "twice"
    for count in (0, 11, True, "3"):
        yield json.dumps({"inputs": [good], "outputs": [{"name": "probabilities", "parameters": {
            "classification": count}}]}).encode(), {}, 400, "classification"
    yield json.dumps({"inputs": [good], "outputs": [{"name": "label", "parameters": {
        "classification": 2}}]}).encode(), {}, 400, "classification applies"
    yield json.dumps({"inputs": [good], "parameters": {"binary_data_output": "yes"}}).encode(), {}, 400, "true or false"
    yield json.dumps({"inputs": [{**IMAGE, "shape": [65], "data": [png_b64] * 65}]}).encode(), {}, 400, "MAX_BATCH"
    header = json.dumps({"inputs": [{**IMAGE, "parameters": {"binary_data_size": 100}}]}).encode()
    yield header + b"\x00" * 10, {HEADER: str(len(header))}, 400, "only 10 are left"
    yield header + b"\x00" * 100, {HEADER: str(len(header))}, 400, "its binary data has 25"  # 25 empty elements
    two = json.dumps({"inputs": [{**IMAGE, "parameters": {"binary_data_size": 2}}]}).encode()
    yield two + b"\x00" * 2, {HEADER: str(len(two))}, 400, "4-byte length"
    yield header + b"\x00" * 200, {HEADER: "99999"}, 400, "Inference-Header-Content-Length"
    yield header + b"\x00" * 200, {HEADER: "-3"}, 400, "Inference-Header-Content-Length"
    short = json.dumps({"inputs": [{**IMAGE, "parameters": {"binary_data_size": 4}}]}).encode()
    yield short + struct.pack("<I", 10), {HEADER: str(len(short))}, 400, "only 0 are left"
    yield short + struct.pack("<I", 0) + b"extra", {HEADER: str(len(short))}, 400, "belong to no input"
    yield json.dumps({"inputs": [{**IMAGE}]}).encode(), {}, 400, "no 'data'"
    yield json.dumps({"inputs": [{**IMAGE, "parameters": {"binary_data_size": -1}}]}).encode(), {}, 400, "byte count"


def test_every_refusal_is_a_clear_protocol_error(client, mnist_pngs):
    for body, headers, status, words in refusals(b64(mnist_pngs[0])):
        response = client.post("/v2/models/digits-cnn/infer", content=body, headers=headers)
        assert response.status_code == status, (body[:120], response.text)
        conforms(response.json(), "inference_error_response")
        assert words in response.json()["error"], (words, response.json())
    assert client.get("/v2/models/digits-cnn/ready").status_code == 200  # and the model still serves


def test_sentiment_refusals(client):
    for inputs, words in [
        ([bytes_input("text", ["   "])], "empty"),
        ([bytes_input("text", ["x" * 5001])], "MAX_TEXT_CHARS"),
        ([bytes_input("text", ["word " * 900] * 5)], "MAX_REQUEST_CHARS"),
        ([{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 99999]},
          {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2]}], "vocabulary"),
        ([{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
          {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [3]}], "length"),
        ([{"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
          {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2]}], "batch size"),
    ]:
        response = client.post("/v2/models/sentiment-lstm/infer", json={"inputs": inputs})
        assert response.status_code == 400 and words in response.json()["error"], response.text
    body, headers = binary_request([{"name": "text", "shape": [1], "datatype": "BYTES"}],
                                   [bytes_to_binary([b"\xff\xfe bad"])])
    response = client.post("/v2/models/sentiment-lstm/infer", content=body, headers=headers)
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]


def test_multipart_is_refused_with_415(client, mnist_pngs):
    response = client.post("/v2/models/digits-cnn/infer", files={"file": ("d.png", mnist_pngs[0], "image/png")})
    assert response.status_code == 415 and "JSON" in response.json()["error"]


def test_api_keys_guard_v2_but_not_its_health_probes(tiny_weights_dir, tmp_path, mnist_pngs):
    settings = make_settings(tiny_weights_dir, tmp_path, api_keys="ci:secret", style_jobs_enabled=False)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200
        refused = client.get("/v2/models/digits-cnn")
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert client.get("/v2").status_code == 401
        request = {"inputs": [bytes_input("image", [b64(mnist_pngs[0])])]}
        assert client.post("/v2/models/digits-cnn/infer", json=request,
                           headers={"Authorization": "Bearer secret"}).status_code == 200


def test_too_large_a_body_is_a_protocol_error(tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, max_upload_bytes=1000, style_jobs_enabled=False)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        response = client.post("/v2/models/digits-cnn/infer", content=b"x" * 2000)
        assert response.status_code == 413 and "error" in response.json()


def test_requests_are_counted_and_timed_per_model(client, mnist_pngs):
    client.post("/v2/models/digits-cnn/infer", json={"inputs": [bytes_input("image", [b64(mnist_pngs[0])])]})
    metrics = client.get("/metrics").text
    assert 'model_predict_latency_seconds_count{model="digits-cnn"}' in metrics or \
        'predict_latency_seconds_count{model="digits-cnn"}' in metrics


# ------------------------------------------------------------------------------------ tensor codec properties

DIMENSIONS = st.lists(st.integers(0, 4), min_size=0, max_size=4)


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(elements=st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_round_trip(elements):
    assert split_bytes_elements("t", bytes_to_binary(elements)) == elements


@hypothesis_settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=64), datatype=st.sampled_from(["BYTES", "FP32", "INT64", "UINT8", "BOOL", "FP16"]),
       shape=DIMENSIONS)
def test_any_binary_data_parses_or_is_refused_with_bad_input(blob, datatype, shape):
    try:
        tensor = from_binary("t", datatype, shape, blob)
    except BadInput:
        return
    assert (len(tensor.values) if datatype == "BYTES" else tensor.values.size) == int(np.prod(shape))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda children: st.lists(children, max_size=4), max_leaves=30)


@hypothesis_settings(max_examples=300, deadline=None)
@given(data=JSON_VALUES, datatype=st.sampled_from(["BYTES", "FP32", "INT8", "UINT64", "BOOL", "FP64"]),
       shape=DIMENSIONS)
def test_any_json_data_parses_or_is_refused_with_bad_input(data, datatype, shape):
    try:
        tensor = from_json("t", datatype, shape, data)
    except BadInput:
        return
    if datatype != "BYTES":
        assert list(tensor.values.shape) == shape


def test_every_openapi_reference_resolves(client):
    """A $ref to a schema that is not under components makes ReDoc refuse the whole page."""
    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    assert "$defs" not in text
    missing = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)) - set(document["components"]["schemas"])
    assert not missing, missing
