"""The HTML report in a real browser: Debian's chromium, headless, at desktop and phone widths, and printed.

Skipped when chromium is not installed, unless ``AWM_REQUIRE_BROWSER=1``
(CI sets it and installs chromium), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from awmtrace.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("AWM_REQUIRE_BROWSER") == "1":
        pytest.fail("AWM_REQUIRE_BROWSER=1 but no chromium found; install it: apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium); set AWM_REQUIRE_BROWSER=1 to make this a failure")


def _run(browser: str, *args: str, cwd: Path) -> None:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # tests often run as root in containers, where chromium's sandbox cannot start
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        # Any network request would fail: the page must render from its own bytes.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={cwd / 'profile'}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.csp: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "poster", "srcset")]
        if tag == "meta" and (d.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = d.get("content")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, family: dict[str, Path]) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    page = folder / "report.html"
    r = CliRunner().invoke(main, ["compare", str(family["base"]), str(family["depth"]), "-q", "--json", "--report", str(page)])
    assert r.exit_code == 0, r.output
    (folder / "result.json").write_text(r.stdout)
    return page


def test_report_loads_nothing_from_the_network_and_says_yes_no(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    parsed = _Links()
    parsed.feed(html)
    assert parsed.urls and all(u.startswith("data:") for u in parsed.urls), parsed.urls
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert parsed.csp is not None and "default-src 'none'" in parsed.csp
    text = " ".join(parsed.text)
    assert not re.search(r"\b(True|False|None)\b", text), re.findall(r".{40}\b(?:True|False|None)\b.{20}", text)
    assert re.search(r"raw scores\s*no", text)
    assert "break-inside: avoid" in html and "break-after: avoid" in html  # prints with headings kept with what follows


@pytest.mark.parametrize("width, height", [(1280, 2400), (390, 3000)], ids=["desktop", "phone"])
def test_report_renders_in_chromium(report: Path, width: int, height: int) -> None:
    browser = _browser()
    shot = report.parent / f"shot-{width}.png"
    _run(browser, f"--screenshot={shot}", f"--window-size={width},{height}", report.as_uri(), cwd=report.parent)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[1] == width
    assert float(pixels.std()) > 0.05, "the screenshot is blank"
    # Something is drawn across the page, not only at its top: the figure and tables render.
    rows_with_ink = np.flatnonzero(pixels.std(axis=(1, 2)) > 0.01)
    assert rows_with_ink.size > height // 10
    # Nothing wider than the phone: the right-most column of pixels is background, not cut-off content.
    if width < 600:
        assert float(pixels[:, -3:, :].std()) < 0.05


def test_report_prints_to_pdf(report: Path) -> None:
    browser = _browser()
    pdf = report.parent / "report.pdf"
    _run(browser, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", report.as_uri(), cwd=report.parent)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000
    result = json.loads((report.parent / "result.json").read_text())
    assert result["verdict"]["label"] == "related"
