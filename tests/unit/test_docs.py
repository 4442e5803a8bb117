"""The documentation site builds with no warning (``mkdocs build --strict``: broken links, missing
snippets, a settings field without a description, a docstring mkdocstrings cannot render), and
README.md stays a short entry point."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_site_builds_strictly_with_generated_references(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is not installed (the docs dependency group: pip install --group docs)")
    mkdocs = str(Path(sys.executable).with_name("mkdocs"))
    r = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    config = (site / "configuration" / "index.html").read_text()
    for text in ("ProviderConfig", "max_students_per_request", "webhook_allowed_networks", "review_share"):
        assert text in config, text
    assert "/v1/jobs/{job_id}/results" in (site / "api" / "index.html").read_text()
    quick = re.sub(r"<[^>]+>", "", (site / "quickstart" / "index.html").read_text())  # code is highlighted
    assert "serve_config.quickstart.yaml" in quick and "client.wait" in quick  # the README's own quick start
    assert "Client" in (site / "reference" / "index.html").read_text()


def test_readme_is_a_short_entry_point():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    for page in ("docs/deploy.md", "docs/api.md", "docs/configuration.md", "jobs/README.md"):
        assert f"({page})" in "\n".join(lines) and (ROOT / page).exists(), page
