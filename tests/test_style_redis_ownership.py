"""Issue 12 item 9 with JOB_BACKEND=redis: style jobs belong to the API key that submitted them, against a real
redis-server and a real server process (`python -m app`, as `make serve` starts it). No worker runs (those are
`python -m app.worker`): a queued job is all ownership needs. The SQLite backend's twin is
tests/test_hardening.py::test_jobs_belong_to_the_key_that_submitted_them."""
import secrets

import httpx
import pytest

from tests.redis_server import redis_server_fixture
from tests.test_e2e import running_server
from tests.test_hardening import assert_every_route_hides
from tests.test_style_api import files

pytestmark = pytest.mark.slow

KEYS = {"alice": "alice-redis-key-1", "bob": "bob-redis-key-2", "ops": "ops-redis-key-3"}
API_KEYS = f"alice:{KEYS['alice']},bob:{KEYS['bob']},ops:{KEYS['ops']}:admin"
PER_OWNER = 2


redis_server = redis_server_fixture("redis-ownership")


@pytest.fixture(scope="module")
def server(tiny_weights_dir, tmp_path_factory, redis_server):
    namespace = f"owners-{secrets.token_hex(4)}"
    env = {"JOB_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_NAMESPACE": namespace, "DEVICE": "cpu",
           "API_KEYS": API_KEYS, "MAX_QUEUED_JOBS": "12", "MAX_QUEUED_JOBS_PER_OWNER": str(PER_OWNER)}
    with running_server(tiny_weights_dir, tmp_path_factory.mktemp("ownership"), **env) as (_, base_url, log_path):
        yield base_url, namespace, log_path


def client(base_url: str, who: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, headers={"X-API-Key": KEYS[who]})


def submit(http: httpx.Client) -> httpx.Response:
    return http.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "5"})


def listed(http: httpx.Client) -> tuple[list[str], int]:
    body = http.get("/v1/style/jobs", params={"limit": 100}).json()
    return [job["id"] for job in body["jobs"]], body["total"]


def test_jobs_in_redis_belong_to_the_key_that_submitted_them(server, redis_server):
    base_url, namespace, log_path = server
    redis = redis_server.client()
    with client(base_url, "alice") as alice, client(base_url, "bob") as bob, client(base_url, "ops") as ops:
        first = submit(alice)
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        assert first.json()["owner"] == "alice"
        assert redis.hget(f"{namespace}:job:{job_id}", "owner") == b"alice"
        assert listed(alice) == ([job_id], 1)

        # another owner: every route of the job answers as for an unknown id, and the listing does not show it
        assert_every_route_hides(bob, job_id)
        assert listed(bob) == ([], 0)
        assert alice.get(f"/v1/style/jobs/{job_id}").json()["status"] == "queued"  # bob's DELETE did nothing
        assert alice.get(f"/v1/style/jobs/{job_id}/preview").status_code == 409  # hers: not ready, not unknown

        # the per-owner cap: alice's third queued job is refused, bob still gets in
        second = submit(alice)
        assert second.status_code == 202, second.text
        refused = submit(alice)
        assert refused.status_code == 429, refused.text
        assert f"MAX_QUEUED_JOBS_PER_OWNER={PER_OWNER}" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        bobs = submit(bob)
        assert bobs.status_code == 202 and bobs.json()["owner"] == "bob", bobs.text
        mine = [second.json()["id"], job_id]
        assert listed(alice) == (mine, 2)
        assert listed(bob) == ([bobs.json()["id"]], 1)
        assert redis.zrevrange(f"{namespace}:owned:alice", 0, -1) == [i.encode() for i in mine]

        # the admin key sees everyone's jobs, in one listing and one by one
        assert listed(ops) == ([bobs.json()["id"], *mine], 3)
        assert ops.get(f"/v1/style/jobs/{job_id}").json()["owner"] == "alice"
        assert ops.get(f"/v1/style/jobs/{bobs.json()['id']}").json()["owner"] == "bob"

        # cancelled, the job is still hers only; deleted, it leaves her listing and her index in Redis
        assert alice.delete(f"/v1/style/jobs/{job_id}").json()["status"] == "cancelled"
        assert bob.delete(f"/v1/style/jobs/{job_id}").status_code == 404
        assert bob.get(f"/v1/style/jobs/{job_id}/result").status_code == 404
        assert alice.get(f"/v1/style/jobs/{job_id}/result").status_code == 410
        assert submit(alice).status_code == 202  # the cancel freed one of her places
        assert alice.delete(f"/v1/style/jobs/{job_id}").status_code == 204
        assert job_id not in listed(alice)[0] and listed(alice)[1] == 2
        assert redis.zscore(f"{namespace}:owned:alice", job_id) is None
        assert not redis.exists(f"{namespace}:job:{job_id}")
        assert ops.delete(f"/v1/style/jobs/{bobs.json()['id']}").json()["status"] == "cancelled"  # an admin may
        for job in alice.get("/v1/style/jobs").json()["jobs"]:
            assert alice.delete(f"/v1/style/jobs/{job['id']}").json()["status"] == "cancelled"
    redis.close()
    log = log_path.read_text()
    assert "caller=alice" in log and "caller=bob" in log
    assert not any(key in log for key in KEYS.values())
