"""Class scans split into students: by page count, by a roster of page ranges, or by cover sheets
whose QR code carries the student id (``zxing-cpp`` reads and draws the codes); and the printable
cover sheets themselves (``raygrade sheets make --roster roster.csv``).

A cover sheet's code holds :data:`COVER_PREFIX` + the student id. Reading a class scan
(:func:`split_by_cover_sheets`), a page whose code reads as a cover starts that student (the
cover is not one of their pages); a page without a code belongs to the student before it. A
page with a code that does not decode (damaged, smudged) or that is not raygrade's is reported
in ``unreadable_sheets`` and the pages after it, up to the next readable cover, are left
unassigned: never guessed onto the student before. A sheet so damaged that no code is found on
it at all cannot be told from an answer page (print covers at :data:`QR_SCALE` or larger).
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable, Sequence

from raygrade.errors import InvalidRequestError
from raygrade.protocol import FileSplit, SplitByCoverSheets, SplitByPageCount, SplitByRoster, StudentPages

#: What a cover sheet's QR code holds before the student id.
COVER_PREFIX = "raygrade:student:"
#: Pixels per QR module on a cover sheet rendered at :data:`SHEET_DPI` (≈ 2.5 mm modules).
QR_SCALE = 14
#: Resolution of the rendered cover sheets (A4: 1240 × 1754 pixels).
SHEET_DPI = 150


def read_cover(image: bytes) -> tuple[str | None, bool]:
    """``(student id, unreadable)`` of one page image: the id when a cover sheet's QR code reads;
    ``unreadable`` when a QR code is found but does not decode, or holds something else.

    Raises:
        ValueError: the image cannot be opened.
    """
    import zxingcpp
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        im.draft("L", im.size)
        found = zxingcpp.read_barcodes(im.convert("L"), formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode),
                                        return_errors=True)
    for code in found:
        if code.valid and code.text.startswith(COVER_PREFIX) and len(code.text) > len(COVER_PREFIX):
            return code.text[len(COVER_PREFIX):], False
    return None, bool(found)


def split_by_cover_sheets(file_id: str, covers: Sequence[tuple[str | None, bool]]) -> FileSplit:
    """The students of a class scan from each page's :func:`read_cover` (in page order)."""
    students: dict[str, StudentPages] = {}
    current: StudentPages | None = None
    out = FileSplit(file_id=file_id, method="cover_sheets", students=[])
    for page, (student, unreadable) in enumerate(covers, 1):
        if student is not None and student in students:
            out.repeated_sheets.append(page)
            current = None
        elif student is not None:
            current = students[student] = StudentPages(student_id=student, pages=[], cover_page=page)
        elif unreadable:
            out.unreadable_sheets.append(page)
            current = None
        elif current is None:
            out.unassigned_pages.append(page)
        else:
            current.pages.append(page)
    out.students = list(students.values())
    return out


def split_by_page_count(file_id: str, pages: int, how: SplitByPageCount) -> FileSplit:
    """``how.pages_per_student`` pages each, in ``how.student_ids``' order.

    Raises:
        InvalidRequestError: the file's page count is not students × pages per student, or a student id repeats.
    """
    _unique(how.student_ids, "student_ids")
    want = len(how.student_ids) * how.pages_per_student
    if want != pages:
        raise InvalidRequestError(f"the file has {pages} pages; {len(how.student_ids)} students × "
                                  f"{how.pages_per_student} pages = {want}", param="pages_per_student")
    k = how.pages_per_student
    return FileSplit(file_id=file_id, method="pages", students=[
        StudentPages(student_id=s, pages=list(range(i * k + 1, i * k + k + 1))) for i, s in enumerate(how.student_ids)])


def split_by_roster(file_id: str, pages: int, how: SplitByRoster) -> FileSplit:
    """Each roster entry's page range; pages in no range are ``unassigned_pages``.

    Raises:
        InvalidRequestError: a range past the file's last page or reversed, overlapping ranges, a
            student id repeated (naming the entry).
    """
    _unique([e.student_id for e in how.roster], "roster")
    owner: dict[int, int] = {}
    for i, e in enumerate(how.roster):
        if e.last_page < e.first_page or e.last_page > pages:
            raise InvalidRequestError(f"roster[{i}]: pages {e.first_page}-{e.last_page} are not within the file's "
                                      f"{pages} pages", param=f"roster[{i}].last_page")
        for p in range(e.first_page, e.last_page + 1):
            if p in owner:
                raise InvalidRequestError(f"roster[{i}]: page {p} is also roster[{owner[p]}]'s",
                                          param=f"roster[{i}].first_page")
            owner[p] = i
    return FileSplit(file_id=file_id, method="roster", unassigned_pages=[p for p in range(1, pages + 1)
                                                                         if p not in owner],
                     students=[StudentPages(student_id=e.student_id, pages=list(range(e.first_page, e.last_page + 1)))
                               for e in how.roster])


def split(file_id: str, pages: int, how: SplitByPageCount | SplitByRoster | SplitByCoverSheets,
          image: Callable[[int], bytes], tenant: str = "") -> FileSplit:
    """A class scan of ``pages`` pages split as ``how`` says; ``image(k)`` reads its page image k
    (0-based), only to split by cover sheets: every page's code is read as ``tenant``'s tasks on
    the decode pool, one page image in memory per thread. Raises :class:`InvalidRequestError` as
    the splits do."""
    if isinstance(how, SplitByPageCount):
        return split_by_page_count(file_id, pages, how)
    if isinstance(how, SplitByRoster):
        return split_by_roster(file_id, pages, how)
    from raygrade.decode_pool import decode_pool

    return split_by_cover_sheets(file_id, decode_pool().map(tenant, lambda k: read_cover(image(k)), range(pages)))


def _unique(ids: Sequence[str], param: str) -> None:
    seen: set[str] = set()
    for s in ids:
        if s in seen:
            raise InvalidRequestError(f"student {s!r} appears twice", param=param)
        seen.add(s)


def cover_sheets(roster: Sequence[tuple[str, str | None]], title: str | None = None) -> bytes:
    """A PDF of A4 cover sheets at :data:`SHEET_DPI`, one per ``(student id, name)``: the QR code of
    :data:`COVER_PREFIX` + id, the id and name in print, and what to do with the sheet."""
    import numpy as np
    import zxingcpp
    from PIL import Image, ImageDraw, ImageFont

    if not roster:
        raise InvalidRequestError("the roster names no student", param="roster")
    pages = []
    for student, name in roster:
        code = zxingcpp.create_barcode(COVER_PREFIX + student, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
        qr = Image.fromarray(np.asarray(code.to_image(scale=QR_SCALE))).convert("L")
        page = Image.new("L", (1240, 1754), 255)
        page.paste(qr, ((1240 - qr.width) // 2, 260))
        d = ImageDraw.Draw(page)
        for y, text, size in ((120, title or "Answer sheets", 44), (300 + qr.height, student, 56),
                              (380 + qr.height, name or "", 44),
                              (1600, "Put this sheet on top of the student's answer pages before scanning.", 28)):
            font = ImageFont.load_default(size=size)
            d.text((620, y), text, fill=0, font=font, anchor="mm")
        pages.append(page)
    out = io.BytesIO()
    pages[0].save(out, format="PDF", save_all=True, append_images=pages[1:], resolution=SHEET_DPI,
                  title=title or "raygrade cover sheets")
    return out.getvalue()


def read_roster(path: str) -> list[tuple[str, str | None]]:
    """``(student id, name)`` rows of a roster CSV with a ``student_id`` column (``name`` optional).

    Raises:
        InvalidRequestError: no ``student_id`` column, an empty id, or an id twice.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "student_id" not in rows[0]:
        raise InvalidRequestError(f"{path}: a roster CSV needs a student_id column (and optionally name)",
                                  param="roster")
    out = [((r["student_id"] or "").strip(), (r.get("name") or "").strip() or None) for r in rows]
    if any(not s for s, _ in out):
        raise InvalidRequestError(f"{path}: a row has no student_id", param="roster")
    _unique([s for s, _ in out], "roster")
    return out


def add_parser(sub) -> None:
    """``raygrade sheets make``: the cover sheets of a roster as a printable PDF."""
    s = sub.add_parser("sheets", help="printable cover sheets that split a class's scan into students")
    ss = s.add_subparsers(dest="action", required=True)
    m = ss.add_parser("make", help="a PDF with one QR cover sheet per student of a roster CSV")
    m.add_argument("--roster", required=True, help="CSV with a student_id column (and optionally name)")
    m.add_argument("--out", default="cover-sheets.pdf", help="the PDF to write (default: %(default)s)")
    m.add_argument("--title", help="printed at the top of every sheet (e.g. the assessment's name)")
    s.set_defaults(fn=cmd_sheets)


def cmd_sheets(a: argparse.Namespace) -> int:
    roster = read_roster(a.roster)
    with open(a.out, "wb") as f:
        f.write(cover_sheets(roster, a.title))
    print(f"{a.out}: {len(roster)} cover sheets; scan each student's pages behind their sheet, upload the scan "
          "(POST /v1/files) and split it (POST /v1/files/{id}/split with method cover_sheets)")
    return 0
