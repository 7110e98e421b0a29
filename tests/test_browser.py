"""A real browser: headless Debian Chromium (SwiftShader WebGL) renders the dataset page."""

import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian chromium and chromium-driver are required (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lamella-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def viewer_panel(driver) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The top-left (xy) quarter of the viewer iframe, as grey pixels."""
    frame = driver.find_element("id", "viewer")
    shot = np.asarray(Image.open(io.BytesIO(frame.screenshot_as_png)).convert("L"))
    height, width = shot.shape
    return shot[int(height * 0.1): int(height * 0.45), int(width * 0.05): int(width * 0.45)]


def test_dataset_page_renders_volume(server: Server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(server.url + "/datasets/demo")
    deadline = time.monotonic() + 120
    panel = np.zeros((1, 1))
    while time.monotonic() < deadline:
        panel = viewer_panel(browser)
        if panel.mean() > 80 and panel.std() > 12 and len(np.unique(panel)) > 60:
            break
        time.sleep(1)
    browser.save_screenshot(str(tmp_path / "dataset.png"))
    assert panel.mean() > 80, "the xy panel stayed dark: no chunks rendered"
    assert panel.std() > 12 and len(np.unique(panel)) > 60, "the xy panel is uniform, not EM texture"
    # Membranes: the demo has dark, thin structures on bright cytoplasm.
    assert (panel < 110).mean() > 0.01 and (panel > 150).mean() > 0.3
    assert "Demo: synthetic" in browser.find_element("id", "title").text
    assert "CC0-1.0" in browser.find_element("id", "facts").text
    # The client posted its state back: the server holds the viewer's own state.
    token = browser.find_element("id", "viewer").get_attribute("data-token")
    state = server.get(f"/api/sessions/{token}").json()
    assert state["state"]["layers"][0]["name"] == "em"
