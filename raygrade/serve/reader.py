"""Reading submissions: OCR as an autoscaling Serve deployment, and the Batcher's fan-out to it.

:class:`PageReader` keeps CPU-bound OCR off the Batcher; :func:`read_submissions` turns a
job's submissions into :class:`~raygrade.prompts.StudentWork`, sending image pages to the
reader in OCR mode (bounded concurrency) and keeping them as images in vision mode.
"""

from __future__ import annotations

import asyncio

from ray import serve

from raygrade.blobs import BlobStore, page_bytes
from raygrade.config import ProviderConfig
from raygrade.errors import RaygradeError, ReadingError
from raygrade.prompts import StudentWork
from raygrade.protocol import (
    GradingErrorItem,
    GradingJob,
    ImagePage,
    ReadingMode,
    StoredImage,
    TextPage,
    resolved,
)
from raygrade.reading.ocr import OCRReader

#: Pages OCR-ed at once per job (the reader deployment queues and autoscales behind this).
OCR_CONCURRENCY = 32


@serve.deployment(name="PageReader", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2})
class PageReader:
    """Reads page images into text with :class:`raygrade.reading.ocr.OCRReader`."""

    def __init__(self):
        self._reader = OCRReader()

    async def read(self, image_bytes: bytes) -> str:
        """OCR one page (runs in a worker thread). Raises ``ReadingError`` for undecodable images."""
        return await asyncio.to_thread(self._reader.read, image_bytes)


def reading_mode(job: GradingJob, provider: ProviderConfig) -> ReadingMode:
    """The job's reading mode, ``auto`` resolved: vision when the provider reads images, else OCR."""
    return job.options.reading_mode.resolve(provider.supports_vision)


async def read_submissions(job: GradingJob, mode: ReadingMode, reader, blobs: BlobStore
                           ) -> tuple[list[StudentWork], list[GradingErrorItem]]:
    """Each student's :class:`StudentWork` (aliases ``s1``, ``s2``, … in submission order).

    Args:
        job: The job (stored page images are read from ``blobs``).
        mode: ``ocr`` sends image pages to ``reader``; otherwise pages stay as they are.
        reader: A ``PageReader`` deployment handle.
        blobs: The job store's blob store.

    Returns:
        ``(works, errors)``: a student whose pages cannot be read gets one error for all
        their questions (``reading_error`` or the reader's own type); the others go on.
    """
    sem = asyncio.Semaphore(OCR_CONCURRENCY)

    async def one(i: int) -> StudentWork:
        sub = job.submissions[i]
        pages: list[TextPage | ImagePage | StoredImage] = []
        for page in sub.pages:
            if isinstance(page, ImagePage | StoredImage) and mode == ReadingMode.OCR:
                async with sem:
                    data = await asyncio.to_thread(page_bytes, page, blobs)
                    text = await reader.read.remote(data)
                pages.append(TextPage(text=text))
            else:
                pages.append(resolved(page))
        return StudentWork(student_id=sub.student_id, alias=f"s{i + 1}", pages=pages,
                           page_indices=list(range(len(sub.pages))),
                           question_ids=[q.id for q in job.questions_for(sub)])

    works, errors = [], []
    outs = await asyncio.gather(*(one(i) for i in range(len(job.submissions))), return_exceptions=True)
    for sub, out in zip(job.submissions, outs):
        if isinstance(out, BaseException):
            # Ray re-raises a replica's exception as a subclass of the original type.
            err = out if isinstance(out, RaygradeError) else ReadingError(f"reading failed: {type(out).__name__}")
            errors.append(GradingErrorItem(student_ids=[sub.student_id],
                                           question_ids=[q.id for q in job.questions_for(sub)],
                                           type=err.error_type, message=getattr(err, "message", str(err))))
        else:
            works.append(out)
    return works, errors
