"""Page files as schools make them, built by the tests: vector and scanned PDFs, an encrypted
PDF, CCITT Group 4 TIFFs, an EXIF-rotated phone JPEG, HEIC and WebP."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def page_image(text: str = "Answer 1: a router forwards packets.", size=(620, 877), mode="L") -> Image.Image:
    """A white page with a line of dark text and a frame (A4 proportions)."""
    im = Image.new(mode, size, 255 if mode in ("L", "1") else (255, 255, 255))
    d = ImageDraw.Draw(im)
    ink = 0 if mode in ("L", "1") else (20, 20, 90)
    d.rectangle([20, 20, size[0] - 21, size[1] - 21], outline=ink, width=3)
    d.text((60, 80), text, fill=ink)
    return im


def _pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A PDF file of ``objects`` (object 1 is the catalog) with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R %s>>\n" % (len(objects) + 1, trailer_extra))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def vector_pdf(pages: int = 3) -> bytes:
    """A PDF of US-letter pages (612 × 792 pt) whose text is vector text in Helvetica (a
    standard font: nothing embedded), one line per page: what a word processor exports."""
    kids = " ".join(f"{3 + 2 * k} 0 R" for k in range(pages)).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages]
    font = 3 + 2 * pages
    for k in range(pages):
        stream = b"BT /F1 36 Tf 72 700 Td (Page %d: TCP and UDP) Tj ET" % (k + 1)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (4 + 2 * k, font))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return _pdf(objects)


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler with a user password (RC4, revision 2): a
    reader without the password cannot open it."""
    pdf = vector_pdf(1)
    enc = (b"/Encrypt << /Filter /Standard /V 1 /R 2 /P -44 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32
           + b"> >> /ID [<" + b"01" * 16 + b"> <" + b"01" * 16 + b">] ")
    return pdf.replace(b"/Root 1 0 R ", b"/Root 1 0 R " + enc)


def scanned_pdf(pages: int = 2) -> bytes:
    """A PDF of raster page images at 150 dpi, as a scanner's "scan to PDF" writes."""
    ims = [page_image(f"Scanned page {k + 1}").convert("RGB") for k in range(pages)]
    out = io.BytesIO()
    ims[0].save(out, format="PDF", save_all=True, append_images=ims[1:], resolution=150)
    return out.getvalue()


def g4_tiff(pages: int = 2) -> bytes:
    """A multi-page bilevel TIFF with CCITT Group 4 compression (scanners' default)."""
    ims = [page_image(f"Fax page {k + 1}").convert("1") for k in range(pages)]
    out = io.BytesIO()
    ims[0].save(out, format="TIFF", compression="group4", save_all=True, append_images=ims[1:])
    return out.getvalue()


def rotated_phone_jpeg() -> bytes:
    """A JPEG stored sideways (sensor landscape, 877 × 620) with EXIF orientation 6: shown
    upright (620 × 877) once rotated 90° clockwise, as phones write portrait photos."""
    upright = page_image("Photographed page", mode="RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 turns back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, format="JPEG", quality=90, exif=exif)
    return out.getvalue()


def heic() -> bytes:
    """A HEIC photo of a page (pillow-heif's encoder)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    page_image("HEIC page", mode="RGB").save(out, format="HEIF", quality=80)
    return out.getvalue()


def webp() -> bytes:
    """A WebP photo of a page."""
    out = io.BytesIO()
    page_image("WebP page", mode="RGB").save(out, format="WEBP", quality=80)
    return out.getvalue()


def gif() -> bytes:
    """A GIF (not an accepted page format)."""
    out = io.BytesIO()
    page_image("GIF page").save(out, format="GIF")
    return out.getvalue()


def tagged_png(png: bytes, tag: int | str) -> bytes:
    """``png`` with a ``tEXt`` chunk holding ``tag``: the same picture, distinct bytes (a distinct page file)."""
    import struct
    import zlib

    data = b"student\x00" + str(tag).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]  # 8-byte signature + 25-byte IHDR chunk
