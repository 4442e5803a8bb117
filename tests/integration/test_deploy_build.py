"""The shipped serve configs through Ray Serve's own schema and builder contract (what ``serve
run`` / ``serve deploy`` / ``serve build`` call before anything starts). Building an application
with a self-hosted model (the embedded default included) reads Ray's runtime context, so these
run on the session's cluster."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["serve_config.yaml", "deploy/serve_config.selfhosted-gpu.yaml", "deploy/serve_config.quickstart.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_serve_config_passes_serves_schema_and_builder_contract(ray_cluster, monkeypatch, path):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / path).read_text()))
    for app in config.applications:
        built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
        assert isinstance(built, Application)


def test_serve_build_import_path_is_an_application(ray_cluster, monkeypatch):
    from ray._common.utils import import_attr
    from ray.serve.deployment import Application

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(import_attr("raygrade.app:app"), Application)
