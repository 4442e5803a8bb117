import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """GPU tests run only on a GPU node with a vLLM vision server given by URL."""
    reason = None
    if shutil.which("nvidia-smi") is None:
        reason = "no NVIDIA GPU on this machine"
    elif not os.environ.get("RAYGRADE_GPU_VLLM_URL"):
        reason = "set RAYGRADE_GPU_VLLM_URL (and RAYGRADE_GPU_VLLM_MODEL) to a vLLM vision server"
    if reason:
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
