"""The /v1/style API over TestClient with one real worker process and the real engine on tiny jobs (64 px)."""
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.style.state import style_state
from tests.conftest import make_settings, wait_until_ready

JOB_TIMEOUT_S = 60
LONG_STEPS = 2000  # a job that keeps the worker busy until it is cancelled
MAX_UPLOAD = 2 * 1024 * 1024


def png(size=(80, 60), color=(200, 40, 40), pattern=True) -> bytes:
    image = Image.new("RGB", size, color)
    if pattern:
        for x in range(0, size[0], 8):
            for y in range(0, size[1], 8):
                if (x + y) // 8 % 2:
                    image.paste((20, 20, 220), (x, y, x + 4, y + 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


CONTENT = png()
STYLE = png((48, 48), (250, 220, 30))


def files(content=CONTENT, styles=(STYLE,)):
    parts = [("content", ("photo.png", content, "image/png"))]
    parts += [("style", (f"style{i}.png", data, "image/png")) for i, data in enumerate(styles)]
    return parts


@pytest.fixture(scope="module")
def client(tiny_weights_dir, tmp_path_factory):
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("style-data"), job_workers=1,
                             max_queued_jobs=8, max_upload_bytes=MAX_UPLOAD)
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def submit(client, steps=2, size=64, **fields):
    response = client.post("/v1/style/jobs", files=files(), data={"size": str(size), "steps": str(steps), **fields})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(client, job_id, predicate, timeout=JOB_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/style/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on job {job_id}: {client.get(f'/v1/style/jobs/{job_id}').json()}")


def wait_done(client, job_id, timeout=JOB_TIMEOUT_S):
    return wait_for(client, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout)


def wait_running(client, job_id):
    return wait_for(client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# --------------------------------------------------------------------------------------------- the happy path

def test_submit_run_and_fetch_the_result(client):
    response = client.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "3", "seed": "5"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/style/jobs/{job['id']}"
    assert job["status"] in ("queued", "running") and len(job["id"]) >= 20
    assert job["progress"] == {"step": 0, "total": 3, "fraction": 0.0} or job["status"] == "running"
    params = job["params"]
    assert (params["size"], params["steps"], params["seed"], params["init"]) == (64, 3, 5, "content")
    assert params["styles"] == [{"upload": "style0.png"}] and params["style_weights"] == [1.0]
    assert job["created_at"].endswith("Z") and job["result_url"] is None

    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 3, "total": 3, "fraction": 1.0}
    assert done["queue_position"] is None and done["started_at"] and done["finished_at"]
    assert set(done["losses"]) >= {"content", "style", "total"}
    assert done["result_url"] == f"/v1/style/jobs/{job['id']}/result"

    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(result.content)).size == (64, 48)  # longest side = size, 4:3 kept
    preview = client.get(f"/v1/style/jobs/{job['id']}/preview")
    assert preview.status_code == 200 and preview.content == result.content

    # a finished job's event stream: its final status at once, then the end
    events = parse_events(client.get(f"/v1/style/jobs/{job['id']}/events").text)
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded"

    # DELETE of a finished job removes the record and the files
    folder = style_state(client.app).service.store.files.job_dir(job["id"])
    assert (folder / "result.png").is_file()
    assert client.delete(f"/v1/style/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/style/jobs/{job['id']}").status_code == 404
    assert client.get(done["result_url"]).status_code == 404
    assert not folder.exists()


def test_event_stream_reports_progress_and_ends_with_the_final_status(client):
    job = submit(client, steps=3)
    response = client.get(f"/v1/style/jobs/{job['id']}/events")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "status" and "progress" in kinds
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["progress"]["fraction"] == 1.0
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == sorted(steps) and steps[-1] == 3
    assert all(data["total"] == 3 for kind, data in events if kind == "progress")


def test_busy_worker_queue_positions_cancel_and_429(client):
    settings = client.app.state.services.settings
    long_job = submit(client, steps=LONG_STEPS)
    running = wait_running(client, long_job["id"])
    assert running["started_at"] and running["attempts"] == 1 and running["losses"]

    # while running: a preview, no result yet (409 naming the status)
    preview = client.get(f"/v1/style/jobs/{long_job['id']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    early = client.get(f"/v1/style/jobs/{long_job['id']}/result")
    assert early.status_code == 409 and "running" in early.json()["detail"]

    queued = submit(client)
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    waiting = client.get(f"/v1/style/jobs/{queued['id']}/result")
    assert waiting.status_code == 409 and "queued" in waiting.json()["detail"]
    assert client.get(f"/v1/style/jobs/{queued['id']}/preview").status_code == 409

    settings.max_queued_jobs = 1
    try:
        full = client.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2"})
        assert full.status_code == 429 and "MAX_QUEUED_JOBS" in full.json()["detail"]
        assert int(full.headers["retry-after"]) >= 1
    finally:
        settings.max_queued_jobs = 8

    # cancel the queued job: at once
    cancelled = client.delete(f"/v1/style/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    gone = client.get(f"/v1/style/jobs/{queued['id']}/result")
    assert gone.status_code == 410 and "cancelled" in gone.json()["detail"]

    # cancel the running job: it stops within a step and the worker takes the next job
    stopped = client.delete(f"/v1/style/jobs/{long_job['id']}")
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    after = submit(client)
    assert wait_done(client, after["id"])["status"] == "succeeded"
    final = client.get(f"/v1/style/jobs/{long_job['id']}").json()
    assert final["status"] == "cancelled" and final["progress"]["step"] < LONG_STEPS
    assert client.get(f"/v1/style/jobs/{long_job['id']}/events").text.rstrip().endswith("}")
    assert client.delete(f"/v1/style/jobs/{long_job['id']}").status_code == 204


def test_list_is_newest_first_and_paged(client):
    ids = []
    for _ in range(3):
        job = submit(client, steps=LONG_STEPS)
        ids.append(job["id"])
        client.delete(f"/v1/style/jobs/{job['id']}")  # cancel: the list is about records, not runs
    first = client.get("/v1/style/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    assert first["total"] >= 3 and first["limit"] == 2 and first["offset"] == 0
    assert first["next"] == "/v1/style/jobs?limit=2&offset=2"
    second = client.get(first["next"]).json()
    assert second["jobs"][0]["id"] == ids[0]
    last = client.get("/v1/style/jobs", params={"limit": 2, "offset": first["total"] - 1}).json()
    assert len(last["jobs"]) == 1 and last["next"] is None
    assert client.get("/v1/style/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/style/jobs", params={"limit": 101}).status_code == 422


# --------------------------------------------------------------------------------------------- presets

def test_presets_list_and_images(client):
    presets = client.get("/v1/style/presets").json()["presets"]
    assert presets and {"name", "title", "artist", "year", "licence", "image_url"} <= set(presets[0])
    image = client.get(presets[0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] in ("image/jpeg", "image/png")
    Image.open(io.BytesIO(image.content)).verify()
    missing = client.get("/v1/style/presets/no-such-painting")
    assert missing.status_code == 404 and presets[0]["name"] in missing.json()["detail"]
    assert client.get("/v1/style/presets/..%2Fmanifest.json").status_code == 404


def test_a_preset_blend_runs(client):
    name = client.get("/v1/style/presets").json()["presets"][0]["name"]
    # The preset goes in as a part after the upload (httpx would put `data` fields first): styles blend in form order.
    response = client.post("/v1/style/jobs", files=files() + [("style_preset", (None, name))], data={
        "size": "64", "steps": "2", "style_weights": "0.25,0.75"})
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert params["styles"] == [{"upload": "style0.png"}, {"preset": name}]
    assert params["style_weights"] == [0.25, 0.75]
    assert wait_done(client, response.json()["id"])["status"] == "succeeded"


# --------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("fields, needle", [
    ({"size": "10"}, "size"),
    ({"steps": "0"}, "steps"),
    ({"init": "x"}, "init"),
    ({"style_weight": "abc"}, "style_weight"),
    ({"style_weights": "1,2"}, "style_weights"),
    ({"style_preset": "no-such-painting"}, "available presets"),
    ({"colour": "red"}, "unknown field"),
])
def test_bad_options_are_422(client, fields, needle):
    response = client.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2", **fields})
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]


def test_missing_parts_are_422(client):
    no_style = client.post("/v1/style/jobs", files=files(styles=()), data={"steps": "2"})
    assert no_style.status_code == 422 and "no style" in no_style.json()["detail"]
    no_content = client.post("/v1/style/jobs", files=[("style", ("s.png", STYLE, "image/png"))])
    assert no_content.status_code == 422 and "content" in no_content.json()["detail"]
    text_content = client.post("/v1/style/jobs", data={"content": "hello", "style_preset": "x"},
                               files=[("style", ("s.png", STYLE, "image/png"))])
    assert text_content.status_code == 422


def test_bad_images_and_bodies(client):
    photo = png((200, 150))
    truncated = client.post("/v1/style/jobs", files=files(content=photo[:len(photo) // 2]))
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith("content:")
    not_image = client.post("/v1/style/jobs", files=files(styles=(b"just some text, not an image",)))
    assert not_image.status_code == 415 and "style" in not_image.json()["detail"]
    json_body = client.post("/v1/style/jobs", json={"content": "x"})
    assert json_body.status_code == 415 and "multipart/form-data" in json_body.json()["detail"]
    huge = client.post("/v1/style/jobs", files=files(content=b"\0" * (MAX_UPLOAD + 1)))
    assert huge.status_code == 413 and "MAX_UPLOAD_BYTES" in huge.json()["detail"]
    settings = client.app.state.services.settings
    settings.max_image_pixels, saved = 1000, settings.max_image_pixels
    try:
        too_many_pixels = client.post("/v1/style/jobs", files=files())
    finally:
        settings.max_image_pixels = saved
    assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["detail"]


@pytest.mark.parametrize("method, suffix", [("get", ""), ("get", "/result"), ("get", "/preview"),
                                            ("get", "/events"), ("delete", "")])
def test_unknown_job_is_404(client, method, suffix):
    response = getattr(client, method)(f"/v1/style/jobs/AAAAAAAAAAAAAAAAAAAAAA{suffix}")
    assert response.status_code == 404 and "no style job" in response.json()["detail"]


# --------------------------------------------------------------------------------------------- options, readiness

def test_options_are_the_engine_s_defaults_and_bounds(client):
    from app.style.options import StyleParams

    body = client.get("/v1/style/options").json()
    form = ("size", "steps", "style_weight", "content_weight", "tv_weight", "init", "seed", "preserve_color",
            "style_scale", "style_weights", "content_layers", "style_layers")
    assert set(body["defaults"]) == set(body["limits"]) == set(form)
    fields = StyleParams.model_fields
    for name in form:
        if name != "size":
            assert body["defaults"][name] == fields[name].default, name
    assert body["defaults"]["size"] == 256  # this CPU's default
    assert body["limits"]["size"] == {"min": 64, "max": 1024}
    assert body["limits"]["steps"]["min"] == 1 and body["limits"]["steps"]["max"] == 2000
    assert body["limits"]["init"]["choices"] == ["content", "noise", "instant"]
    assert body["limits"]["style_weights"]["max_items"] == body["max_styles"] == 4
    for name in ("style_weight", "content_weight", "tv_weight", "style_scale"):  # numbers: min and max keys
        assert {"min", "max"} <= set(body["limits"][name]) and body["types"][name] == "number"
    assert body["max_upload_bytes"] == MAX_UPLOAD and body["max_upload_mb"] == 2.0
    assert "starry_night" in body["presets"]
    # every default is accepted by the submit form as it is
    job = submit(client, steps=1, size=body["defaults"]["size"] // 4,
                 style_weight=str(body["defaults"]["style_weight"]),
                 content_weight=str(body["defaults"]["content_weight"]))
    assert job["params"]["style_weight"] == body["defaults"]["style_weight"]
    wait_done(client, job["id"])


def test_readyz_says_style_is_ready_without_changing_status(client):
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while body["style"] == "starting" and time.monotonic() < deadline:
        time.sleep(0.1)
        body = client.get("/readyz").json()
    assert body["style"] == "ready" and "style_detail" not in body


def test_default_size_setting_and_no_workers(tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, job_workers=0, style_default_size=320)
    with TestClient(create_app(settings)) as other:
        wait_until_ready(other)
        assert other.get("/v1/style/options").json()["defaults"]["size"] == 320
        ready = other.get("/readyz")
        assert ready.status_code == 200 and ready.json()["style"] == "unavailable"
        assert "JOB_WORKERS=0" in ready.json()["style_detail"]
        job = submit(other, steps=5)
        assert job["status"] == "queued" and job["eta_s"] is None  # nothing will run it: no made-up number
        assert other.get("/v1/style/estimate").json()["workers"] == 0


def test_style_disabled_in_readyz(tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, style_jobs_enabled=False)
    with TestClient(create_app(settings)) as other:
        wait_until_ready(other)
        assert other.get("/readyz").json()["style"] == "disabled"
        assert other.get("/v1/style/options").status_code == 404


def test_readyz_says_style_failed_when_the_engine_cannot_load(tiny_weights_dir, tmp_path):
    broken = tmp_path / "vgg.pth"
    broken.write_bytes(b"not a checkpoint")
    settings = make_settings(tiny_weights_dir, tmp_path / "data", job_workers=1, style_vgg_weights=broken)
    with TestClient(create_app(settings)) as other:
        wait_until_ready(other)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        body = other.get("/readyz").json()
        while body["style"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.1)
            body = other.get("/readyz").json()
        assert other.get("/readyz").status_code == 200  # the classifiers still serve
        assert body["style"] == "failed" and "could not be loaded" in body["style_detail"], body
