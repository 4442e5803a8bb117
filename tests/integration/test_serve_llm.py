"""The self-hosted GPU deployment file, built as Serve builds it (a job and a bulk regrade through
a model on ``ray.serve.llm`` run in ``test_two_nodes.py``, which deploys it on a second node)."""

from raygrade.config import RaygradeArgs


def test_the_gpu_serve_config_places_its_model_on_gpu_nodes(ray_cluster):
    """deploy/serve_config.selfhosted-gpu.yaml as shipped: Serve's schema, the builder, and the model's
    deployment asks for a GPU bundle on the named accelerator and scales from zero (built, not run)."""
    from pathlib import Path

    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.selfhosted-gpu.yaml"
    app = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications[0]
    assert isinstance(call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args),
                      Application)
    args = RaygradeArgs.model_validate(app.args)
    assert args.provider.kind == "serve_llm" and args.provider.supports_vision
    dep = args.models[0].deployment()._bound_deployment
    bundles = dep._replica_config.placement_group_bundles
    assert bundles and bundles[0]["GPU"] == 1 and "accelerator_type:L40S" in bundles[0]
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (0, 4)
