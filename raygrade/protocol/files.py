"""The Files API's objects (OpenAI's shapes): an uploaded page file, a page of them, a deletion;
and the split of a class's scan into students (by page count, a roster, or cover sheets)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from raygrade.protocol._base import _Input, _Model
from raygrade.protocol.jobs import MAX_PAGES

#: A student id as in a submission.
StudentId = Annotated[str, Field(min_length=1, max_length=256)]


class FileObject(_Model):
    """An uploaded file (``POST /v1/files``, ``GET /v1/files/{id}``): OpenAI's file object with
    the number of page images raygrade split it into.

    A job's page ``{"type": "file", "file_id": id, "page": k}`` names its page ``k`` (1-based),
    or every page without ``page`` (:class:`raygrade.protocol.pages.FilePage`).
    """

    id: str = Field(description="`file-` and 24 hexadecimal digits.")
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0, description="Size of the file as uploaded, in bytes.")
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["pages"] = "pages"
    media_type: str = Field(description="What the file is, from its first bytes (e.g. `application/pdf`).")
    pages: int = Field(ge=1, description="Page images the file holds (a PDF's or TIFF's pages; 1 for an image).")


class FileList(_Model):
    """The body of ``GET /v1/files``: a page of the caller's files, newest first (next page:
    ``?after=last_id`` while ``has_more``)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(_Model):
    """The body of ``DELETE /v1/files/{id}``. Jobs accepted before keep their pages."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class SplitByPageCount(_Input):
    """Every student has the same number of pages, in roster order: pages 1..k are the first
    student's, k+1..2k the second's, and so on. The file must hold exactly that many pages."""

    method: Literal["pages"] = "pages"
    pages_per_student: int = Field(ge=1, le=MAX_PAGES, strict=True)
    student_ids: list[StudentId] = Field(min_length=1, max_length=2_000)


class RosterEntry(_Input):
    """One student's pages in a class scan: ``first_page`` to ``last_page`` (1-based, inclusive)."""

    student_id: StudentId
    first_page: int = Field(ge=1, strict=True)
    last_page: int = Field(ge=1, strict=True)


class SplitByRoster(_Input):
    """A roster of page ranges; ranges may not overlap, pages in none are reported as unassigned."""

    method: Literal["roster"] = "roster"
    roster: list[RosterEntry] = Field(min_length=1, max_length=2_000)


class SplitByCoverSheets(_Input):
    """Each student's pages follow a cover sheet carrying the student id in a QR code
    (``raygrade sheets make``): a page without a code belongs to the student of the cover before
    it; a cover whose code cannot be read is reported, and the pages after it (up to the next
    readable cover) are left unassigned, never guessed."""

    method: Literal["cover_sheets"] = "cover_sheets"


SplitRequest = Annotated[SplitByPageCount | SplitByRoster | SplitByCoverSheets, Field(discriminator="method")]


class StudentPages(_Model):
    """One student found in a class scan: their answer pages (1-based) and the cover sheet's page."""

    student_id: str
    pages: list[int]
    cover_page: int | None = None


class FileSplit(_Model):
    """The answer of ``POST /v1/files/{id}/split``: who has which pages of a class scan, before
    anything is graded. :meth:`submissions` turns it into a job's submissions."""

    object: Literal["file.split"] = "file.split"
    file_id: str
    method: Literal["pages", "roster", "cover_sheets"]
    students: list[StudentPages]
    unassigned_pages: list[int] = Field(default_factory=list, description=(
        "Pages in no student's range: before the first cover sheet, after an unreadable or repeated one, "
        "or outside every roster range."))
    unreadable_sheets: list[int] = Field(default_factory=list, description=(
        "Pages with a code that could not be read (a damaged or foreign cover sheet): reported, not guessed."))
    repeated_sheets: list[int] = Field(default_factory=list, description=(
        "Cover sheets of a student already seen earlier in the file; the pages after them are unassigned."))

    def submissions(self) -> list[dict]:
        """One submission per student (``{"student_id", "pages": [file pages]}``), for a job body."""
        return [{"student_id": s.student_id, "pages": [{"type": "file", "file_id": self.file_id, "page": p}
                                                       for p in s.pages]}
                for s in self.students if s.pages]
