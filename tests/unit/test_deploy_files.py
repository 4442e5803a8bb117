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
    jsonschema = pytest.importorskip("jsonschema", reason="pip install 'raygrade[test]'")
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
    jsonschema = pytest.importorskip("jsonschema", reason="pip install 'raygrade[test]'")
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
    jsonschema = pytest.importorskip("jsonschema", reason="pip install 'raygrade[test]'")
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
