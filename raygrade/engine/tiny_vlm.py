"""A tiny vision-language model for proving the vision path on CPU, built locally with no hub.

The SmolVLM architecture (``Idefics3ForConditionalGeneration``) is SigLIP-style vision tiles,
a pixel-shuffle connector and a SmolLM2 text backbone. :func:`prepare_tiny_vlm` builds one
from the SmolLM2-135M weights raygrade already converts (:func:`raygrade.engine.local_vllm.
prepare_model`): the Idefics3 image tokens added to its tokenizer, the embeddings resized, the
text weights loaded into the backbone, and a small random vision tower (hidden 96, 2 layers,
512-px tiles of 16-px patches, ``scale_factor`` 4: 64 tokens per tile). Its grades are noise;
it exists so that page images reach a vLLM vision model in CI and image-token estimates can be
checked against the engine's count. Cached under ``cache_dir`` like the text model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from raygrade.config import LocalEngineConfig
from raygrade.engine.local_vllm import prepare_model

_DONE_MARKER = "raygrade-tiny-vlm.json"

#: The image processor's settings: pages are scaled so the longest edge is ``LONGEST_EDGE``,
#: cut into ``TILE``-px tiles (plus one downscaled global image), ``TOKENS_PER_TILE`` each.
LONGEST_EDGE = 1024
TILE = 512
TOKENS_PER_TILE = 64
_ROWS = _COLS = 6


def prepare_tiny_vlm(config: LocalEngineConfig | None = None, *, seed: int = 0) -> Path:
    """Build the tiny Idefics3 model once and return its folder (model, processor, tokenizer).

    Safe to call from several processes: built in a temporary folder, renamed into place.

    Raises:
        MissingDependencyError: torch or transformers is not installed (the ``cpu`` extra).
    """
    config = config or LocalEngineConfig()
    text_dir = prepare_model(config)
    out = Path(config.cache_dir) / "models" / f"tiny-idefics3-{text_dir.name}"
    if (out / _DONE_MARKER).exists():
        return out
    from raygrade._optional import import_optional

    torch = import_optional("torch", "cpu", "building the tiny vision model")
    tf = import_optional("transformers", "cpu", "building the tiny vision model")
    torch.manual_seed(seed)
    tok = tf.AutoTokenizer.from_pretrained(str(text_dir))
    special = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    special += [f"<row_{r}_col_{c}>" for r in range(1, _ROWS + 1) for c in range(1, _COLS + 1)]
    tok.add_special_tokens({"additional_special_tokens": special})
    text = tf.AutoModelForCausalLM.from_pretrained(str(text_dir), dtype=torch.float32)
    vision = {"model_type": "idefics3_vision", "hidden_size": 96, "intermediate_size": 384,
              "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": TILE, "patch_size": 16}
    cfg = tf.Idefics3Config(vision_config=vision, text_config=text.config.to_dict(), scale_factor=4,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
                            pad_token_id=text.config.pad_token_id)
    model = tf.Idefics3ForConditionalGeneration(cfg)
    text.resize_token_embeddings(len(tok))
    model.resize_token_embeddings(len(tok))
    model.model.text_model.load_state_dict(text.model.state_dict())
    model.lm_head.weight = model.model.text_model.embed_tokens.weight
    image_processor = tf.Idefics3ImageProcessorPil(
        size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True)
    processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=TOKENS_PER_TILE,
                                     chat_template=tok.chat_template)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.to(torch.bfloat16).save_pretrained(str(tmp), safe_serialization=True)
    processor.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / _DONE_MARKER).write_text(json.dumps({"text_model": str(text_dir), "seed": seed}))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
