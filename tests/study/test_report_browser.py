"""The report as a reader sees it: opened in headless Chromium, every figure loads and shows."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from dpscope.study import build_report

CHROMIUM = Path("/usr/bin/chromium")
WIDTH_PX = 1280
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]

# appended to a copy of the report only: what the browser made of every <img>, and where it is
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
            box: [r.left + scrollX, r.top + scrollY, r.width, r.height]};
  });
  document.body.setAttribute("data-probe", JSON.stringify(
    {images, page_height: document.documentElement.scrollHeight}));
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


def test_every_figure_loads_and_shows_in_chromium(tiny_study, tmp_path):
    report = build_report(tiny_study)
    page = report.read_text()
    count = page.count("<img ")
    assert count >= 2

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    result = chromium(f"--window-size={WIDTH_PX},1000", "--virtual-time-budget=10000",
                      "--dump-dom", probe.as_uri(), profile=tmp_path / "p1")
    match = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert match, result.stderr[-2000:]
    found = json.loads(match.group(1).replace("&quot;", '"'))
    images = found["images"]
    assert len(images) == count
    for image in images:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image

    # the report itself (no probe), screenshotted whole: each figure's box is drawn, not blank
    shot = tmp_path / "shot.png"
    height = int(found["page_height"])
    chromium(f"--window-size={WIDTH_PX},{height}", f"--screenshot={shot}", report.as_uri(),
             profile=tmp_path / "p2")
    pixels = imread(shot)[..., :3]  # (H, W, 3) in [0, 1]
    assert pixels.shape[0] >= height - 5
    for image in images:
        left, top, width, box_height = (int(round(v)) for v in image["box"])
        region = pixels[top:top + box_height, left:left + width]
        assert region.size and region.std() > 0.05, f"figure at {image['box']} looks blank"
        assert (region.min(axis=2) < 0.5).mean() > 0.005, f"figure at {image['box']} has no ink"
