"""Render answer text as handwriting-style scanned pages (PNG), for demos and tests.

Uses a handwriting-style font when one is installed (Debian's OFL
``fonts-comic-neue``, ``fonts-dancingscript``, ...), else DejaVu Sans, else
Pillow's built-in font. Pages are ruled, the text wobbles slightly like a
hand, and a long answer wraps onto further pages.
"""

from __future__ import annotations

import functools
import io
import os
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf",
    "/usr/share/fonts/truetype/comic-neue/ComicNeue-Regular.ttf",
    "/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)

PAGE_W, PAGE_H = 1000, 900
MARGIN_X, MARGIN_TOP, LINE_H = 60, 90, 58
FONT_SIZE = 30


@functools.lru_cache(maxsize=4)
def handwriting_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The first installed handwriting-style font at ``size`` px (Pillow's default otherwise)."""
    for path in _FONT_CANDIDATES:
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def font_name() -> str:
    """Which font :func:`handwriting_font` uses (for reports)."""
    for path in _FONT_CANDIDATES:
        if os.path.exists(path):
            return os.path.basename(path)
    return "Pillow default"


def wrap_lines(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``max_width`` pixels (paragraphs kept)."""
    lines: list[str] = []
    for para in text.replace("\r", "").split("\n"):
        words, cur = para.split(), ""
        for w in words:
            cand = f"{cur} {w}".strip()
            if font.getlength(cand) <= max_width or not cur:
                cur = cand
            else:
                lines.append(cur)
                cur = w
        if cur:
            lines.append(cur)
    return lines


def render_pages(text: str, *, seed: int = 0, header: str | None = None) -> list[bytes]:
    """Render ``text`` as one or more PNG pages.

    Args:
        text: The answer.
        seed: Seeds the wobble and noise, so renders are reproducible.
        header: Optional line printed at the top of the first page (e.g. "Q 2.1").

    Returns:
        PNG bytes per page (at least one page, even for empty text).
    """
    rng = random.Random(seed)
    font = handwriting_font()
    lines = wrap_lines(text, font, PAGE_W - 2 * MARGIN_X)
    per_page = (PAGE_H - MARGIN_TOP - 40) // LINE_H
    chunks = [lines[i:i + per_page] for i in range(0, len(lines), per_page)] or [[]]
    pages = []
    for n, chunk in enumerate(chunks):
        img = Image.new("RGB", (PAGE_W, PAGE_H), (252, 250, 243))
        d = ImageDraw.Draw(img)
        for y in range(MARGIN_TOP + LINE_H - 12, PAGE_H - 20, LINE_H):
            d.line([(30, y), (PAGE_W - 30, y)], fill=(190, 205, 230), width=2)
        small = handwriting_font(22)
        label = f"{header}  - page {n + 1}/{len(chunks)}" if header else f"page {n + 1}/{len(chunks)}"
        d.text((MARGIN_X, 30), label, font=small, fill=(120, 120, 120))
        for i, line in enumerate(chunk):
            x = MARGIN_X + rng.randint(-4, 4)
            y = MARGIN_TOP + i * LINE_H + rng.randint(-3, 3)
            d.text((x, y), line, font=font, fill=(25, 35, 90))
        img = img.rotate(rng.uniform(-0.6, 0.6), resample=Image.Resampling.BICUBIC, fillcolor=(252, 250, 243))
        img = img.filter(ImageFilter.GaussianBlur(0.4))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        pages.append(buf.getvalue())
    return pages
