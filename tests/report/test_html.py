"""The HTML report: every plot produced and embedded, the data carried, nothing fetched; and,
where Chromium is installed (always in CI), that a browser renders the page with its plots."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from inferopt.report.html import PLOTS, render_html, write_html
from inferopt.report.schema import Comparison, Measurement, from_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in IMAGE.findall(page)]


@pytest.fixture(scope="module")
def page(measurement: Measurement) -> str:
    return render_html(measurement)


def test_every_plot_is_an_embedded_png(page: str) -> None:
    images = _images(page)
    assert len(images) == len(PLOTS) == 6
    assert all(png.startswith(PNG_SIGNATURE) and len(png) > 5_000 for png in images)
    for title, _ in PLOTS:
        assert html.escape(title) in page


def test_the_page_needs_no_network_and_carries_its_data(
    page: str, measurement: Measurement
) -> None:
    assert not re.search(r'(src|href)="(https?:)?//', page)
    data = re.search(r'<script type="application/json" id="measurement">(.*?)</script>', page, re.S)
    assert data is not None
    assert from_json(json.loads(data.group(1))) == measurement


def test_comparison_page_has_both_models_and_the_ratios(comparison: Comparison) -> None:
    page = render_html(comparison)
    assert len(_images(page)) == len(PLOTS)
    assert "small vs wide" in page and "wide / small, runs interleaved" in page


# Skipped only outside CI: .ci/run installs Chromium and sets CI=1, so there a missing
# browser fails the test instead of hiding it.
@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="chromium is not installed (CI installs it: .ci/run)",
)
def test_chromium_renders_the_plots(measurement: Measurement, tmp_path: Path) -> None:
    page = write_html(measurement, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--hide-scrollbars", "--window-size=1200,2400",
        f"--screenshot={shot}", page.as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    # Plots are colour: the first model's blue boxes and bars cover a visible area.
    blue = (pixels[..., 2] > 0.55) & (pixels[..., 0] < 0.45)
    assert blue.mean() > 0.01
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank or error page
