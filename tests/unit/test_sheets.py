"""Class scans split into students (``raygrade.sheets``): by page count, by roster, by QR cover
sheets — on a 40-page class PDF built here, one of its cover sheets damaged."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw
from support import scan_files

from raygrade.errors import InvalidRequestError
from raygrade.protocol import GradingJob, SplitByCoverSheets, SplitByPageCount, SplitByRoster
from raygrade.scans import page_images
from raygrade.sheets import COVER_PREFIX, cover_sheets, read_cover, split, split_by_cover_sheets

STUDENTS = [f"st-{i:02d}" for i in range(10)]


def _pages(pdf: bytes) -> list[Image.Image]:
    return [Image.open(io.BytesIO(p)).convert("L") for p in page_images(pdf)]


def _damaged(cover: Image.Image) -> Image.Image:
    """A cover whose QR code is smudged past its error correction (a quarter of it inked over)."""
    out = cover.copy()
    box = Image.eval(out, lambda v: 255 - v).getbbox()  # everything printed; the QR is the largest part
    qr = max(box[2] - box[0], 1) // 2
    x0, y0 = (out.width - qr) // 2 + qr // 3, 260 + qr // 3
    ImageDraw.Draw(out).rectangle([x0, y0, x0 + qr // 4, y0 + qr // 4], fill=0)
    return out


@pytest.fixture(scope="module")
def class_scan() -> bytes:
    """40 pages: for each of 10 students a cover sheet and 3 answer pages; st-06's cover damaged."""
    covers = _pages(cover_sheets([(s, f"Student {s}") for s in STUDENTS], title="Networks quiz"))
    pages = []
    for s, cover in zip(STUDENTS, covers, strict=True):
        pages.append(_damaged(cover) if s == "st-06" else cover)
        pages += [scan_files.page_image(f"{s}: answer page {k}") for k in (1, 2, 3)]
    out = io.BytesIO()
    pages[0].save(out, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    return out.getvalue()


def test_cover_sheets_carry_each_student_s_id_in_a_readable_qr_code():
    pdf = cover_sheets([("ada", "Ada L."), ("bob", None), ("名前-7", "Zoë")])
    images = page_images(pdf)
    assert [read_cover(p) for p in images] == [("ada", False), ("bob", False), ("名前-7", False)]
    assert read_cover(page_images(scan_files.scanned_pdf(1))[0]) == (None, False)  # an answer page


def test_a_class_pdf_split_by_cover_sheets_reports_the_unreadable_one(class_scan):
    images = page_images(class_scan)
    assert len(images) == 40
    got = split("file-x", 40, SplitByCoverSheets(), images.__getitem__)
    want = {s: [4 * i + 2, 4 * i + 3, 4 * i + 4] for i, s in enumerate(STUDENTS) if s != "st-06"}
    assert {s.student_id: s.pages for s in got.students} == want
    assert {s.student_id: s.cover_page for s in got.students} == {s: p[0] - 1 for s, p in want.items()}
    assert got.unreadable_sheets == [25] and got.unassigned_pages == [26, 27, 28]  # not guessed onto st-05
    subs = got.submissions()
    job = GradingJob.model_validate({"assessment": {"questions": [{"id": "q", "prompt": "?", "max_score": 1}]},
                                     "submissions": subs})
    assert job.submissions[0].student_id == "st-00" and [p.page for p in job.submissions[0].pages] == [2, 3, 4]


def test_pages_before_the_first_cover_and_after_a_repeated_one_are_unassigned():
    reads = [(None, False), ("ada", False), (None, False), ("bob", False), (None, False), ("ada", False),
             (None, False)]
    got = split_by_cover_sheets("file-x", reads)
    assert [(s.student_id, s.pages, s.cover_page) for s in got.students] == [("ada", [3], 2), ("bob", [5], 4)]
    assert (got.unassigned_pages, got.repeated_sheets, got.unreadable_sheets) == ([1, 7], [6], [])


def test_a_class_pdf_split_by_page_count_and_by_roster(class_scan):
    never = lambda k: pytest.fail("no page image is read")  # noqa: E731
    by_count = split("file-x", 40, SplitByPageCount(pages_per_student=4, student_ids=STUDENTS), never)
    assert [s.pages for s in by_count.students][6] == [25, 26, 27, 28] and not by_count.unassigned_pages
    roster = SplitByRoster.model_validate({"roster": [
        {"student_id": s, "first_page": 4 * i + 2, "last_page": 4 * i + 4} for i, s in enumerate(STUDENTS)]})
    by_roster = split("file-x", 40, roster, never)
    assert by_roster.students[9].pages == [38, 39, 40] and by_roster.unassigned_pages == list(range(1, 40, 4))


@pytest.mark.parametrize("how, message, param", [
    (SplitByPageCount(pages_per_student=3, student_ids=STUDENTS), "40 pages; 10 students × 3 pages = 30",
     "pages_per_student"),
    (SplitByPageCount(pages_per_student=20, student_ids=["a", "a"]), "'a' appears twice", "student_ids"),
    (SplitByRoster.model_validate({"roster": [{"student_id": "a", "first_page": 1, "last_page": 5},
                                              {"student_id": "b", "first_page": 5, "last_page": 6}]}),
     "page 5 is also roster[0]'s", "roster[1].first_page"),
    (SplitByRoster.model_validate({"roster": [{"student_id": "a", "first_page": 39, "last_page": 41}]}),
     "pages 39-41 are not within the file's 40 pages", "roster[0].last_page"),
    (SplitByRoster.model_validate({"roster": [{"student_id": "a", "first_page": 3, "last_page": 2}]}),
     "pages 3-2", "roster[0].last_page")])
def test_splits_that_do_not_fit_the_file_are_400s_naming_the_field(how, message, param):
    with pytest.raises(InvalidRequestError) as e:
        split("file-x", 40, how, lambda k: b"")
    assert message in e.value.message and e.value.param == param


def test_raygrade_sheets_make_prints_a_roster_s_cover_sheets(tmp_path, capsys):
    from raygrade.cli import main

    (tmp_path / "roster.csv").write_text("student_id,name\nada,Ada L.\nbob,\n", encoding="utf-8")
    out = tmp_path / "covers.pdf"
    assert main(["sheets", "make", "--roster", str(tmp_path / "roster.csv"), "--out", str(out),
                 "--title", "Quiz 3"]) == 0
    assert [read_cover(p) for p in page_images(out.read_bytes())] == [("ada", False), ("bob", False)]
    assert "2 cover sheets" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("id\nada\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="student_id column"):
        main(["sheets", "make", "--roster", str(tmp_path / "bad.csv"), "--out", str(out)])
    assert COVER_PREFIX == "raygrade:student:"
