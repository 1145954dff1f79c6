"""Every endpoint and every error case, through the real app (tiny random weights, real batcher)."""
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from models.digits import DIGIT_CLASSES
from models.objects import CIFAR10_CLASSES
from tests.conftest import make_settings, wait_until_ready

MODEL_NAMES = ["digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"]


def digit_image(digit: int = 7, size: int = 64, mode: str = "L") -> Image.Image:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).text((size // 3, size // 4), str(digit), fill=255, font_size=size // 2)
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    pixels = (np.asarray(digit_image(3), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(pixels))


def rgba_png() -> bytes:
    image = digit_image(5, mode="RGBA")
    image.putalpha(Image.new("L", image.size, 180))
    return encode(image)


IMAGE_FILES = {
    "png": lambda: encode(digit_image(1)),
    "jpeg": lambda: encode(digit_image(2, mode="RGB"), "JPEG"),
    "gif": lambda: encode(digit_image(3, mode="P"), "GIF"),
    "bmp": lambda: encode(digit_image(4, mode="RGB"), "BMP"),
    "webp": lambda: encode(digit_image(6, mode="RGB"), "WEBP"),
    "png16": sixteen_bit_png,
    "rgba": rgba_png,
}


def truncated_png() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    return data[: len(data) // 2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upload(client, task: str, data: bytes, filename: str = "image.png", params=None):
    return client.post(f"/v1/{task}/predict", files={"file": (filename, data, "application/octet-stream")},
                       params=params)


def assert_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for fragment in fragments:
        assert fragment in detail, detail
    return detail


def assert_prediction(body: dict, model: str, classes: list[str], top_k: int = 3) -> None:
    assert body["model"] == model
    assert body["label"] in classes and body["label"] == body["top"][0]["label"]
    assert body["score"] == body["top"][0]["score"]
    scores = [entry["score"] for entry in body["top"]]
    assert len(body["top"]) == top_k and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-5
    assert len({entry["label"] for entry in body["top"]}) == top_k


@pytest.fixture(scope="module")
def limited_client(tiny_weights_dir, tmp_path_factory):
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("data"), max_upload_bytes=4096,
                             max_image_pixels=10_000, max_batch_items=4, max_text_chars=100)
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


# --- health and models ---------------------------------------------------------------------------------------------

def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("status", "device", "models")} == {"status": "ready", "device": body["device"],
                                                                    "models": MODEL_NAMES}
    assert body["style"] in ("starting", "ready", "unavailable", "disabled"), body  # style never drives status
    assert set(body) <= {"status", "device", "models", "backends", "error", "style", "style_detail"}
    assert set(body["backends"]) == set(MODEL_NAMES) and set(body["backends"].values()) <= {"torch", "onnxruntime"}


def test_models_list(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == MODEL_NAMES
    by_name = {m["name"]: m for m in models}
    assert by_name["digits-cnn"]["default"] and not by_name["digits-mlp"]["default"]
    assert by_name["objects-resnet"]["classes"] == CIFAR10_CLASSES
    for model in models:
        for field in ("task", "architecture", "device", "classes", "parameters", "sha256", "metrics",
                      "hyperparameters", "trained_at", "torch_version", "backend", "inference"):
            assert model[field] is not None, (model["name"], field)
        assert model["backend"] == model["inference"]["backend"] in ("torch", "onnxruntime")
        assert model["parameters"] > 0 and len(model["sha256"]) == 64


def test_one_model(client):
    body = client.get("/v1/models/sentiment-lstm").json()
    assert body["task"] == "sentiment" and body["classes"] == ["negative", "positive"] and body["default"]


def test_unknown_model_is_404(client):
    assert_error(client.get("/v1/models/nope"), 404, "unknown model 'nope'; available: digits-cnn, digits-mlp")


# --- image prediction ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", IMAGE_FILES)
@pytest.mark.parametrize("task, model, classes", [("digits", "digits-cnn", DIGIT_CLASSES),
                                                  ("objects", "objects-resnet", CIFAR10_CLASSES)])
def test_multipart_image_formats(client, fmt, task, model, classes):
    response = upload(client, task, IMAGE_FILES[fmt](), filename=f"image.{fmt}")
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), model, classes)


def test_base64_json_and_data_url_give_the_same_answer_as_multipart(client):
    data = encode(digit_image(7))
    expected = upload(client, "digits", data).json()
    assert client.post("/v1/digits/predict", json={"image": b64(data)}).json() == expected
    data_url = f"data:image/png;base64,{b64(data)}"
    assert client.post("/v1/digits/predict", json={"image": data_url}).json() == expected


@pytest.mark.parametrize("task", ["digits", "objects"])
def test_batch_results_are_in_input_order(client, task):
    images = [encode(digit_image(d, mode="RGB")) for d in (0, 4, 8, 9, 1)]
    singles = [upload(client, task, data).json() for data in images]
    response = client.post(f"/v1/{task}/predict", json={"images": [b64(data) for data in images]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == len(images) and body["model"] == singles[0]["model"]
    for single, result in zip(singles, body["results"]):
        assert result["label"] == single["label"]
        assert result["score"] == pytest.approx(single["score"], abs=1e-4)


def test_batch_items_share_one_forward_pass(client):
    stats = client.app.state.services.registry.batcher_stats()["digits-cnn"]
    passes_before = stats.forward_passes
    images = [b64(encode(digit_image(d))) for d in range(8)]
    assert client.post("/v1/digits/predict", json={"images": images}).status_code == 200
    assert stats.forward_passes - passes_before == 1


def test_model_query_selects_the_mlp(client):
    response = upload(client, "digits", encode(digit_image(7)), params={"model": "digits-mlp"})
    assert response.status_code == 200
    assert_prediction(response.json(), "digits-mlp", DIGIT_CLASSES)


def test_unknown_model_query_is_404(client):
    assert_error(upload(client, "digits", encode(digit_image()), params={"model": "nope"}), 404,
                 "unknown model 'nope'", "digits-cnn, digits-mlp")


def test_model_of_another_task_is_404(client):
    assert_error(upload(client, "objects", encode(digit_image()), params={"model": "digits-mlp"}), 404,
                 "'digits-mlp' is a digits model", "objects models: objects-resnet")


@pytest.mark.parametrize("top_k, expected", [(0, "greater than or equal to 1"), (11, "less than or equal to 10"),
                                             ("x", "valid integer")])
def test_top_k_out_of_range_is_422(client, top_k, expected):
    detail = assert_error(upload(client, "digits", encode(digit_image()), params={"top_k": top_k}), 422, expected)
    assert detail.startswith("query top_k: ")


@pytest.mark.parametrize("top_k", [1, 10])
def test_top_k_sets_the_number_of_entries(client, top_k):
    response = upload(client, "digits", encode(digit_image()), params={"top_k": top_k})
    assert_prediction(response.json(), "digits-cnn", DIGIT_CLASSES, top_k=top_k)


def test_validation_errors_list_the_details(client):
    body = upload(client, "digits", encode(digit_image()), params={"top_k": 0}).json()
    assert body["errors"] == [{"type": "greater_than_equal", "loc": ["query", "top_k"],
                               "msg": "Input should be greater than or equal to 1"}]


# --- image errors ---------------------------------------------------------------------------------------------------

def test_truncated_png_is_400(client):
    assert_error(upload(client, "digits", truncated_png()), 400, "truncated")


def test_bad_base64_is_400(client):
    assert_error(client.post("/v1/digits/predict", json={"image": "not base64 at all!"}), 400, "base64")


def test_bad_item_in_a_batch_names_its_index(client):
    images = [b64(encode(digit_image())), "%%%", b64(encode(digit_image()))]
    assert_error(client.post("/v1/objects/predict", json={"images": images}), 400, "images[1]: ")


def test_text_file_upload_is_415(client):
    assert_error(upload(client, "digits", b"just some text\n", filename="notes.txt"), 415, "not an image")


@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", "image/png"])
def test_other_content_types_are_415(client, content_type):
    response = client.post("/v1/digits/predict", content=b"<x/>", headers={"content-type": content_type})
    assert_error(response, 415, f"unsupported content type '{content_type}'", "multipart/form-data", "application/json")


def test_missing_content_type_is_415(client):
    assert_error(client.post("/v1/digits/predict", content=b"abc"), 415, "unsupported content type")


def test_missing_file_field_is_422(client):
    response = client.post("/v1/digits/predict", files={"image": ("a.png", encode(digit_image()), "image/png")})
    assert_error(response, 422, "multipart field 'file' is missing")


def test_file_field_that_is_not_a_file_is_422(client):
    response = client.post("/v1/digits/predict", data={"file": "hello"}, files={"x": ("a.txt", b"x", "text/plain")})
    assert_error(response, 422, "'file' is not a file")


@pytest.mark.parametrize("body, expected", [
    ({"images": []}, "body images: "),
    ({"images": ["x"] * 65}, "at most 64 items"),
    ({}, "Send exactly one of 'image' or 'images'"),
    ({"image": "x", "images": ["x"]}, "Send exactly one of"),
    ({"image": 5}, "body image: Input should be a valid string"),
])
def test_invalid_json_bodies_are_422(client, body, expected):
    assert_error(client.post("/v1/objects/predict", json=body), 422, expected)


def test_malformed_json_is_400(client):
    # A body that is not JSON is a syntax error (400, as the README's error table says); 422 is for JSON that
    # parses but breaks the schema.
    response = client.post("/v1/digits/predict", content=b"{oops", headers={"content-type": "application/json"})
    assert_error(response, 400, "the body is not valid JSON", "line 1 column 2")


def test_body_over_max_upload_bytes_is_413(limited_client):
    assert_error(upload(limited_client, "digits", b"\0" * 5000), 413, "the limit is 4096 bytes (MAX_UPLOAD_BYTES)")


def test_chunked_body_over_max_upload_bytes_is_413(limited_client):
    def chunks():
        for _ in range(10):
            yield b'{"image": "' + b"A" * 1000

    response = limited_client.post("/v1/digits/predict", content=chunks(),
                                    headers={"content-type": "application/json"})
    assert_error(response, 413, "request body exceeds the limit of 4096 bytes (MAX_UPLOAD_BYTES)")


def test_image_over_max_image_pixels_is_413(limited_client):
    assert_error(upload(limited_client, "digits", encode(Image.new("L", (200, 200)))), 413)


def test_batch_over_max_batch_items_is_422(limited_client):
    images = [b64(encode(digit_image(size=28)))] * 5
    assert_error(limited_client.post("/v1/digits/predict", json={"images": images}), 422, "at most 4 items")


def test_get_on_a_predict_route_is_405(client):
    response = client.get("/v1/digits/predict")
    assert_error(response, 405, "method GET not allowed on /v1/digits/predict; use POST")
    assert response.headers["allow"] == "POST"


def test_unknown_route_is_404(client):
    assert_error(client.get("/v3/nothing"), 404, "not found: /v3/nothing")


# --- sentiment ------------------------------------------------------------------------------------------------------

def test_sentiment_single_text(client):
    response = client.post("/v1/sentiment/predict", json={"text": "a good, fun film!"})
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), "sentiment-lstm", ["negative", "positive"], top_k=2)


def test_sentiment_batch_matches_singles(client):
    texts = ["good movie", "it was n't good , it was awful", "boring", "love it"]
    singles = [client.post("/v1/sentiment/predict", json={"text": t}, params={"top_k": 1}).json() for t in texts]
    body = client.post("/v1/sentiment/predict", json={"texts": texts}, params={"top_k": 1}).json()
    assert body["model"] == "sentiment-lstm" and len(body["results"]) == len(texts)
    for single, result in zip(singles, body["results"]):
        assert result["label"] == single["label"]
        assert result["score"] == pytest.approx(single["score"], abs=1e-4)


def test_sentiment_text_plain(client):
    text = "a great movie, I love it"
    expected = client.post("/v1/sentiment/predict", json={"text": text}).json()
    response = client.post("/v1/sentiment/predict", content=text.encode(),
                           headers={"content-type": "text/plain; charset=utf-8"})
    assert response.status_code == 200 and response.json() == expected


def test_sentiment_text_plain_not_utf8_is_400(client):
    response = client.post("/v1/sentiment/predict", content="très bien".encode("latin-1"),
                           headers={"content-type": "text/plain"})
    assert_error(response, 400, "not valid utf-8")


def test_sentiment_unknown_words_still_predict(client):
    assert client.post("/v1/sentiment/predict", json={"text": "zzzz qqqq"}).status_code == 200
    assert client.post("/v1/sentiment/predict", json={"text": "!!!"}).status_code == 200


@pytest.mark.parametrize("body, expected", [
    ({"text": ""}, "body text: Text is empty"),
    ({"text": "  \n\t "}, "body text: Text is empty"),
    ({"texts": ["fine", " "]}, "body texts[1]: Text is empty"),
    ({"texts": []}, "body texts: "),
    ({"texts": ["good"] * 65}, "at most 64 items"),
    ({}, "Send exactly one of 'text' or 'texts'"),
    ({"sentence": "good"}, "Send exactly one of 'text' or 'texts'"),
    ({"text": "x" * 5001}, "the limit is 5000 (MAX_TEXT_CHARS)"),
])
def test_invalid_sentiment_bodies_are_422(client, body, expected):
    assert_error(client.post("/v1/sentiment/predict", json=body), 422, expected)


def test_blank_text_plain_is_422(client):
    response = client.post("/v1/sentiment/predict", content=b"   ", headers={"content-type": "text/plain"})
    assert_error(response, 422, "Text is empty")


def test_sentiment_rejects_multipart_with_415(client):
    assert_error(upload(client, "sentiment", b"good"), 415, "application/json", "text/plain")


def test_sentiment_top_k_over_two_is_422(client):
    response = client.post("/v1/sentiment/predict", json={"text": "good"}, params={"top_k": 3})
    assert_error(response, 422, "query top_k: Input should be less than or equal to 2")


def test_sentiment_model_of_another_task_is_404(client):
    response = client.post("/v1/sentiment/predict", json={"text": "good"}, params={"model": "digits-cnn"})
    assert_error(response, 404, "'digits-cnn' is a digits model")


# --- robustness and documentation -----------------------------------------------------------------------------------

def test_bad_requests_leave_no_trace(client):
    good_image, good_text = encode(digit_image(2)), {"texts": ["good", "bad"]}
    before = (upload(client, "digits", good_image).json(), client.post("/v1/sentiment/predict", json=good_text).json())
    assert upload(client, "digits", truncated_png()).status_code == 400
    assert client.post("/v1/digits/predict", json={"images": [b64(good_image), "@@"]}).status_code == 400
    assert client.post("/v1/sentiment/predict", json={"texts": ["good", ""]}).status_code == 422
    after = (upload(client, "digits", good_image).json(), client.post("/v1/sentiment/predict", json=good_text).json())
    assert after == before


def test_concurrent_requests_are_all_answered(client):
    from concurrent.futures import ThreadPoolExecutor

    images = [encode(digit_image(d)) for d in range(10)]
    expected = [upload(client, "digits", data).json() for data in images]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda data: upload(client, "digits", data).json(), images * 3))
    for answer, want in zip(answers, expected * 3):
        assert answer["label"] == want["label"]
        assert answer["score"] == pytest.approx(want["score"], abs=1e-4)


def test_openapi_documents_both_body_shapes_and_the_response(client):
    spec = client.get("/openapi.json").json()
    for task in ("digits", "objects"):
        operation = spec["paths"][f"/v1/{task}/predict"]["post"]
        content = operation["requestBody"]["content"]
        assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
        assert set(content["application/json"]["schema"]["properties"]) == {"image", "images"}
        assert "PredictionResponse" in str(operation["responses"]["200"])
        assert {"400", "404", "413", "415", "422", "503"} <= set(operation["responses"])
        assert {p["name"] for p in operation["parameters"]} == {"model", "top_k"}
    sentiment = spec["paths"]["/v1/sentiment/predict"]["post"]["requestBody"]["content"]
    assert set(sentiment) == {"application/json", "text/plain"}


def test_unexpected_errors_are_a_generic_500(tiny_weights_dir, tmp_path):
    app = create_app(make_settings(tiny_weights_dir, tmp_path))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    detail = assert_error(response, 500, "internal server error")
    assert "secret" not in detail


def test_requests_before_startup_are_503(tiny_weights_dir, tmp_path):
    client = TestClient(create_app(make_settings(tiny_weights_dir, tmp_path)))  # no `with`: lifespan not run
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert_error(client.post("/v1/sentiment/predict", json={"text": "good"}), 503, "retry shortly")


# --- the committed weights (skipped when they are absent) -----------------------------------------------------------

HELDOUT_SAMPLE = 256


@pytest.fixture(scope="module")
def real_client(tmp_path_factory):
    from app.core.config import PROJECT_ROOT

    weights_dir = PROJECT_ROOT / "weights"
    if not (weights_dir / "manifest.json").is_file():
        pytest.skip("no committed weights (weights/manifest.json)")
    with TestClient(create_app(make_settings(weights_dir, tmp_path_factory.mktemp("data")))) as test_client:
        wait_until_ready(test_client, timeout_s=120)
        yield test_client


def heldout(name: str):
    from app.core.config import PROJECT_ROOT

    data = np.load(PROJECT_ROOT / "data" / "heldout" / f"{name}.npz")
    return {key: data[key][:HELDOUT_SAMPLE] for key in data.files}


def served_accuracy(client, task: str, field: str, inputs: list, labels, classes: list[str]) -> tuple[float, str]:
    predicted = []
    for start in range(0, len(inputs), 64):
        response = client.post(f"/v1/{task}/predict", json={field: inputs[start:start + 64]})
        assert response.status_code == 200, response.text
        predicted += [result["label"] for result in response.json()["results"]]
    correct = sum(label == classes[y] for label, y in zip(predicted, labels))
    return correct / len(labels), response.json()["model"]


def manifest_accuracy(client, name: str) -> float:
    return client.get(f"/v1/models/{name}").json()["metrics"]["accuracy"]


@pytest.mark.real_weights
@pytest.mark.parametrize("task, dataset, classes", [("digits", "mnist-test", DIGIT_CLASSES),
                                                    ("objects", "cifar-test", CIFAR10_CLASSES)])
def test_served_image_accuracy_matches_the_manifest(real_client, task, dataset, classes):
    data = heldout(dataset)
    images = [b64(encode(Image.fromarray(pixels))) for pixels in data["x"]]
    accuracy, model = served_accuracy(real_client, task, "images", images, data["y"], classes)
    assert accuracy >= manifest_accuracy(real_client, model) - 0.05, accuracy


@pytest.mark.real_weights
def test_served_sentiment_accuracy_matches_the_manifest(real_client):
    data = heldout("sst2-dev")
    accuracy, model = served_accuracy(real_client, "sentiment", "texts", [str(t) for t in data["texts"]], data["y"],
                                      ["negative", "positive"])
    assert accuracy >= manifest_accuracy(real_client, model) - 0.06, accuracy


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_only_small_images_are_decoded_on_the_event_loop(client):
    handler = client.app.state.services.registry.for_task("digits", None).handler
    limit = client.app.state.services.settings.inline_decode_pixels
    assert handler.decodes_inline(png_of_size(28, 28))
    assert handler.decodes_inline(png_of_size(256, 256)) == (256 * 256 <= limit)
    assert not handler.decodes_inline(png_of_size(1000, 1000))  # worker thread: may take milliseconds
    assert not handler.decodes_inline(b"not an image")  # unknown size: the thread pays for the error path
    assert not handler.decodes_inline(base64.b64encode(png_of_size(28, 28)).decode())


def test_a_large_image_decoded_in_a_worker_thread_is_classified(client):
    canvas = Image.new("L", (1200, 900), 255)
    canvas.paste(Image.new("L", (60, 400), 0), (500, 250))  # a thick "1"
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    response = client.post("/v1/digits/predict", files={"file": ("one.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    assert len(response.json()["top"]) == 3
