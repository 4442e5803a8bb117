"""Image-token rules against the providers' published examples; text counting offline."""

import pytest

from raygrade.config import ProviderConfig
from raygrade.errors import ConfigError
from raygrade.tokens import (
    TiktokenCounter,
    counter_for,
    gpt4o_image_tokens,
    gpt41_image_tokens,
    image_tokens,
    qwen2vl_image_tokens,
)


@pytest.mark.parametrize("w,h,detail,expected", [
    (1024, 1024, "high", 765),     # OpenAI guide: 1024x1024 high detail -> 765
    (2048, 4096, "high", 1105),    # OpenAI guide: 2048x4096 -> 768x1536, 6 tiles -> 1105
    (4096, 8192, "low", 85),       # low detail is flat
    (512, 512, "high", 255),       # one tile, no scaling up
])
def test_gpt4o_tile_rule(w, h, detail, expected):
    assert gpt4o_image_tokens(w, h, detail) == expected


def test_gpt4o_mini_multiplier():
    assert gpt4o_image_tokens(1024, 1024, "high", "gpt-4o-mini") == 2833 + 4 * 5667


def test_gpt41_patch_rule_published_examples():
    assert gpt41_image_tokens(1024, 1024, "gpt-4.1") == 1024       # 32x32 patches
    assert gpt41_image_tokens(1800, 2400, "gpt-4.1") == 1452       # scaled to fit 1536 patches
    assert gpt41_image_tokens(1024, 1024, "gpt-4.1-mini") == 1659  # 1024 x 1.62, rounded up


def test_qwen2vl_28px_rule():
    assert qwen2vl_image_tokens(448, 448) == 16 * 16 + 2
    assert qwen2vl_image_tokens(20, 20) == 2 * 2 + 2             # scaled up to min_pixels 56x56
    big = qwen2vl_image_tokens(4000, 3000)
    assert big - 2 <= 1280                                        # max_pixels = 1280 tokens


def test_image_tokens_dispatch_and_none():
    assert image_tokens("gpt-4o", 1024, 1024) == 765
    with pytest.raises(ConfigError):
        image_tokens("none", 10, 10)
    with pytest.raises(ValueError):
        gpt4o_image_tokens(0, 10)


def test_tiktoken_counts_offline():
    c = TiktokenCounter()
    assert c.count("hello world") == 2
    assert c.count("") == 0
    assert counter_for(ProviderConfig(base_url="http://x")).count("hello world") == 2


def test_idefics3_image_tokens_follow_the_processors_tiling(tmp_path):
    import json

    from raygrade.tokens import idefics3_image_tokens, idefics3_settings, image_tokens

    tiny = {"longest_edge": 1024, "tile": 512, "tokens_per_tile": 64}
    # 1000×900 → 1024×922 → 2×2 tiles of 66 + 2 row ends + the global image's 67 (transformers' count)
    assert idefics3_image_tokens(1000, 900, **tiny) == 333
    assert idefics3_image_tokens(400, 300, **tiny) == 333          # scaled up to the longest edge too
    assert idefics3_image_tokens(2000, 500, **tiny) == 200         # one row of two tiles
    assert idefics3_image_tokens(2000, 500, **tiny, splitting=False) == 67
    assert idefics3_image_tokens(1240, 1754) == 4 * 3 * 66 + 4 + 67  # SmolVLM-256M's defaults: 2048 / 512 / 64
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "image_seq_len": 64, "image_processor": {"size": {"longest_edge": 1024},
                                                 "max_image_size": {"longest_edge": 512}, "do_image_splitting": True}}))
    assert idefics3_settings(str(tmp_path)) == {**tiny, "splitting": True}
    assert image_tokens("idefics3", 1000, 900, model_dir=str(tmp_path)) == 333


@pytest.mark.parametrize("w,h,tokens", [(200, 200, 54), (1000, 1000, 1334), (1092, 1092, 1590), (3000, 2000, 1600)])
def test_claude_image_rule_matches_anthropics_table(w, h, tokens):
    """Anthropic's vision guide: ≈ 54 tokens at 200×200, ≈ 1,334 at 1000×1000, ≈ 1,590 at 1092×1092;
    larger images are scaled down to about 1,600 tokens."""
    assert image_tokens("claude", w, h) == tokens


@pytest.mark.parametrize("w,h,tokens", [(384, 384, 258), (300, 100, 258), (768, 768, 258), (1000, 900, 1032)])
def test_gemini_image_rule_is_258_per_tile(w, h, tokens):
    assert image_tokens("gemini", w, h) == tokens
