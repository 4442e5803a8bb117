"""The shipped deploy files, checked the way Serve and Kubernetes read them (no cluster needed).

- (serve_config.yaml through Ray Serve's own schema and builder contract, and ``serve build``'s
  contract on ``raygrade.app:app``, need Ray: tests/integration/test_deploy_build.py);
- deploy/kuberay/rayservice.yaml against the RayService CRD's openAPIV3Schema (KubeRay v1,
  committed in deploy/kuberay/) and in sync with serve_config.yaml.
"""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_builder_rejects_unknown_deployment_options():
    from raygrade.app import build_app

    with pytest.raises(ValueError, match="unknown deployments"):
        build_app({"deployment_options": {"Gradr": {"num_replicas": 2}}})


def _manifest(name: str = "rayservice.yaml") -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay" / name).read_text())


def test_rayservice_manifest_is_in_sync_with_serve_config():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kuberay_manifest.py")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    v2 = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    shipped = _serve_config()
    assert v2["applications"] == shipped["applications"]
    assert v2["http_options"] == {**shipped["http_options"], "host": "0.0.0.0"}


def _crd_schema() -> dict:
    with gzip.open(ROOT / "deploy" / "kuberay" / "rayservice-crd-v1.schema.json.gz") as f:
        return json.load(f)["schema"]


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the structural schema does not declare (what ``kubectl apply --validate=strict``
    refuses and the API server otherwise prunes silently); JSON Schema alone allows them."""
    out = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                out += unknown_fields(v, props[k], f"{path}/{k}")
            elif isinstance(extra, dict):
                out += unknown_fields(v, extra, f"{path}/{k}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{path}/{k}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += unknown_fields(v, schema["items"], f"{path}/{i}")
    return out


def test_rayservice_manifest_validates_against_the_crd_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install --group test (pyproject.toml)")
    schema = _crd_schema()
    manifest = _manifest()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    assert unknown_fields({k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")},
                          schema) == []
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    groups = {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head_env = {e["name"]: e for e in manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
                ["containers"][0]["env"]}
    for secret in ("OPENAI_API_KEY", "RAYGRADE_STORE_URL", "RAYGRADE_WEBHOOK_SECRET"):
        assert "secretKeyRef" in head_env[secret]["valueFrom"], secret
    # The provider override in the manifest is a valid provider for the shipped args.
    from raygrade.config import ProviderConfig

    ProviderConfig.model_validate_json(head_env["RAYGRADE_ARGS__PROVIDER"]["value"])


def test_crd_schema_catches_a_broken_manifest():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install --group test (pyproject.toml)")
    schema = _crd_schema()
    bad = _manifest()
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
    typo = _manifest()
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParms"] = {}
    assert unknown_fields(typo, schema) == ["/spec/rayClusterConfig/headGroupSpec/rayStartParms"]


def test_grafana_dashboard_is_generated_from_the_metrics():
    import re

    from raygrade.metrics import METRICS

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "grafana_dashboard.py")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads((ROOT / "deploy" / "grafana" / "raygrade.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    charted = {re.sub(r"_(bucket)$", "", n) for e in exprs for n in re.findall(r"ray_raygrade_\w+", e)}
    assert charted == {m.exported for m in METRICS.values()}



def test_the_gpu_manifest_places_the_self_hosted_model_on_its_gpu_group():
    """deploy/kuberay/rayservice.selfhosted-gpu.yaml: valid against the CRD, its serveConfigV2 is the GPU
    serve config (in sync, checked by the script above), a GPU group that scales from zero, the model
    folder mounted where the config reads it, and no provider override that would replace the model."""
    jsonschema = pytest.importorskip("jsonschema", reason="pip install --group test (pyproject.toml)")
    manifest = _manifest("rayservice.selfhosted-gpu.yaml")
    schema = _crd_schema()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    assert unknown_fields({k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")},
                          schema) == []
    from raygrade.config import RaygradeArgs

    v2 = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((ROOT / "deploy" / "serve_config.selfhosted-gpu.yaml").read_text())
    assert v2["applications"] == shipped["applications"]
    args = RaygradeArgs.model_validate(v2["applications"][0]["args"])
    (model,) = args.models
    assert model.device == "gpu" and model.min_replicas == 0 and args.provider.kind == "serve_llm"
    cluster = manifest["spec"]["rayClusterConfig"]
    gpu = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}["gpu"]
    pod = gpu["template"]["spec"]
    assert gpu["minReplicas"] == 0 and gpu["rayStartParams"]["num-gpus"] == "1"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["nvidia.com/gpu.product"].endswith(model.accelerator_type)
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert any(model.model_source.startswith(m) for m in mounts)
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert not any(n.startswith("RAYGRADE_ARGS__") for n in env), env


def _worker_probes(name: str) -> list[dict]:
    groups = _manifest(name)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [g["template"]["spec"]["containers"][0]["readinessProbe"] for g in groups]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayservice.selfhosted-gpu.yaml"])
def test_worker_pods_are_ready_only_when_the_app_is(name):
    """Every worker group's readiness probe, run as the kubelet runs it (``bash -c``, the image's
    wget), against loopback servers standing in for the raylet's health route and the app: not
    Ready while ``/readyz`` answers 503 (the model loading) or the raylet is unhealthy, Ready on
    200; its timeout outlasts the 503 ``/readyz`` gives after ``READY_TIMEOUT_S``."""
    import http.server
    import shutil
    import threading

    from raygrade.serve.ingress import READY_TIMEOUT_S

    if shutil.which("wget") is None:
        pytest.skip("wget (in the rayproject/ray image the probe runs in) is not installed here")
    probes = _worker_probes(name)
    assert len(probes) == 2 and all(p == probes[0] for p in probes)
    probe = probes[0]
    command = probe["exec"]["command"]
    assert command[:2] == ["bash", "-c"]
    serve_port = yaml.safe_load(_manifest(name)["spec"]["serveConfigV2"])["http_options"]["port"]
    assert f"http://localhost:{serve_port}/readyz" in command[2]
    assert probe["timeoutSeconds"] > READY_TIMEOUT_S + 2  # /readyz's own wait, then wget's -T

    answers = {"/api/local_raylet_healthz": (200, b"success"), "/readyz": (503, b'{"status":"not_ready"}')}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, body = answers.get(self.path, (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    script = (command[2].replace("localhost:52365", f"127.0.0.1:{servers[0].server_port}")
              .replace(f"localhost:{serve_port}", f"127.0.0.1:{servers[1].server_port}"))
    assert script != command[2] and "localhost" not in script

    def ready() -> bool:
        return subprocess.run(["bash", "-c", script], capture_output=True, timeout=30).returncode == 0

    try:
        assert not ready()                                   # the model is loading
        answers["/readyz"] = (200, b'{"status":"ready"}')
        assert ready()
        answers["/api/local_raylet_healthz"] = (500, b"")    # the node itself is unhealthy
        assert not ready()
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
