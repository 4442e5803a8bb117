"""``PageReader``: OCR as an autoscaling Serve deployment (CPU-bound work off the batcher)."""

from __future__ import annotations

import asyncio

from ray import serve

from raygrade.reading.ocr import OCRReader


@serve.deployment(name="PageReader", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2})
class PageReader:
    """Reads page images into text with :class:`raygrade.reading.ocr.OCRReader`."""

    def __init__(self):
        self._reader = OCRReader()

    async def read(self, image_bytes: bytes) -> str:
        """OCR one page (runs in a worker thread). Raises ``ReadingError`` for undecodable images."""
        return await asyncio.to_thread(self._reader.read, image_bytes)
