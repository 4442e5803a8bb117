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
