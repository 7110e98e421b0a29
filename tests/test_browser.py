"""A real browser: headless Debian Chromium (SwiftShader WebGL) renders the dataset page."""

import contextlib
import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import CURATOR, ROOT, Server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
GUIDE_SCREENSHOT = ROOT / "docs" / "images" / "dataset-page.png"  # shown by the README and the user guide


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
    # The link that shares this view is the session's own address.
    assert browser.find_element("id", "viewer-link").get_attribute("href") == f"{server.url}/v/{token}/"


def settled_screenshot(driver, seconds: float = 30) -> bytes:  # type: ignore[no-untyped-def]
    """The page once two screenshots a second apart agree (the last chunks have landed)."""
    previous = None
    deadline = time.monotonic() + seconds
    while True:
        png = driver.get_screenshot_as_png()
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
        if previous is not None and previous.shape == pixels.shape and np.abs(previous - pixels).mean() < 0.2:
            return png
        if time.monotonic() > deadline:
            return png
        previous = pixels
        time.sleep(1)


def keep_for_the_guide(png: bytes) -> None:
    """Write the guide's screenshot of the dataset page, so that it always shows the page as it is.

    The file is replaced only when the page looks different: rendering noise alone leaves the
    committed file (and the checkout) as it was.
    """
    new = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    if GUIDE_SCREENSHOT.exists():
        old = np.asarray(Image.open(GUIDE_SCREENSHOT).convert("RGB"), dtype=np.int16)
        if old.shape == new.shape and np.abs(old - new).mean() < 1.5:
            return
    GUIDE_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    GUIDE_SCREENSHOT.write_bytes(png)


def colour_panel(driver) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The central part of the viewer iframe, as RGB."""
    frame = driver.find_element("id", "viewer")
    shot = np.asarray(Image.open(io.BytesIO(frame.screenshot_as_png)).convert("RGB")).astype(np.int16)
    height, width, _ = shot.shape
    return shot[int(height * 0.15): int(height * 0.85), int(width * 0.15): int(width * 0.85)]


def green_mask(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])) > 40


def wait_for(predicate, seconds: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(1)
    return None


def test_correlative_overlay_puts_fluorescence_on_the_mitochondria(  # type: ignore[no-untyped-def]
    server: Server, browser, tmp_path: Path
) -> None:
    """The demo's fluorescence, placed by its stored affine, glows where the EM shows mitochondria.

    Driven through the page's own overlay controls: layout select and the visibility checkbox.
    """
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/datasets/demo")
    layout = wait_for(lambda: next(iter(browser.find_elements("css selector", "#overlay select")), None), 60)
    assert layout is not None, "the overlay controls did not appear"
    rows = browser.find_elements("css selector", "#overlay .overlay-layer")
    assert [row.get_attribute("data-layer") for row in rows] == ["em", "fluorescence"]
    Select(layout).select_by_value("xy")  # one large xy panel
    overlay = wait_for(lambda: (lambda rgb: rgb if green_mask(rgb).mean() > 0.01 else None)(colour_panel(browser)))
    browser.save_screenshot(str(tmp_path / "overlay.png"))
    assert overlay is not None, "no fluorescence was drawn over the EM"
    keep_for_the_guide(settled_screenshot(browser))
    token = browser.find_element("id", "viewer").get_attribute("data-token")
    assert server.get(f"/api/sessions/{token}").json()["state"]["layout"] == "xy"
    # Hide the fluorescence with its checkbox and look at the EM alone, same view.
    browser.find_element("css selector", '#overlay [data-layer="fluorescence"] input[type=checkbox]').click()
    em_only = wait_for(lambda: (lambda rgb: rgb if green_mask(rgb).mean() < 0.001 else None)(colour_panel(browser)))
    assert em_only is not None, "hiding the fluorescence layer did not take effect"
    time.sleep(2)  # let the last chunks land
    em_only = colour_panel(browser).mean(axis=-1)
    green = green_mask(overlay)
    inside, outside = em_only[green].mean(), em_only[~green].mean()
    # Demo mitochondria are ~105 (cristae 150) on ~185 cytoplasm: the glow must sit on darker EM.
    assert inside < outside - 25, f"EM under the fluorescence {inside:.0f} vs elsewhere {outside:.0f}"
    # A control: the same glow moved by 60 screen pixels no longer sits on the mitochondria.
    shifted = np.roll(green, (60, 60), axis=(0, 1))
    assert em_only[shifted].mean() > inside + 10


def client_state(driver) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The state of the Neuroglancer client itself, inside the iframe."""
    import json

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        return json.loads(driver.execute_script("return JSON.stringify(viewer.state.toJSON())"))
    finally:
        driver.switch_to.default_content()


def ctrl_click(driver, offsets: list[tuple[int, int]], panel_index: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Ctrl+click (Neuroglancer's "annotate") at offsets from the centre of a slice view (the first: xy)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        panel = driver.find_elements("css selector", ".neuroglancer-rendered-data-panel")[panel_index]
        for dx, dy in offsets:
            ActionChains(driver).move_to_element_with_offset(panel, dx, dy).key_down(Keys.CONTROL).click() \
                .key_up(Keys.CONTROL).perform()
            time.sleep(0.3)
    finally:
        driver.switch_to.default_content()


def on_screen(state: dict, point_nm: list[float]) -> tuple[int, int]:  # type: ignore[type-arg]
    """Where a point (x, y, z in nm) is drawn in the xy view, as an offset from the view's centre: the panels'
    sizes change with Neuroglancer's side panel, which opens as a layer is chosen, so a point is found where the
    viewer's state puts it, not where it was clicked."""
    metres = [state["dimensions"][axis][0] for axis in ("x", "y")]
    return tuple(round((point_nm[i] * 1e-9 / metres[i] - state["position"][i]) / state["crossSectionScale"])
                 for i in range(2))  # type: ignore[return-value]


def alt_drag(driver, start: tuple[int, int], by: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Alt+drag (Neuroglancer's "move annotation") in the xy view from ``start`` (offset from its centre) by
    ``by`` screen pixels, in steps; the pointer rests on the annotation first so that the viewer picks it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        panel = driver.find_elements("css selector", ".neuroglancer-rendered-data-panel")[0]

        for attempt in range(120):  # a frame drawn under the pointer picks the annotation: wait until one has
            ActionChains(driver).move_to_element_with_offset(panel, start[0], start[1] + attempt % 2).perform()
            time.sleep(0.25)
            if driver.execute_script("return viewer.mouseState.pickedAnnotationId != null"):
                break
        else:
            raise AssertionError("the viewer never picked the annotation under the pointer")
        steps = 3
        chain = ActionChains(driver).key_down(Keys.ALT).click_and_hold()
        for _ in range(steps):
            chain = chain.move_by_offset(by[0] // steps, by[1] // steps)
        chain.release().key_up(Keys.ALT).perform()
    finally:
        driver.switch_to.default_content()


def ctrl_right_click(driver, offset: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Ctrl+right-click (Neuroglancer's "select") at an offset from the centre of the xy view."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        panel = driver.find_elements("css selector", ".neuroglancer-rendered-data-panel")[0]
        ActionChains(driver).move_to_element_with_offset(panel, *offset).perform()
        time.sleep(1.0)  # the pointer rests on the annotation: the viewer picks it
        ActionChains(driver).key_down(Keys.CONTROL).context_click().key_up(Keys.CONTROL).perform()
    finally:
        driver.switch_to.default_content()


def sign_in(driver, server: Server, name: str, password: str, then: str) -> None:  # type: ignore[no-untyped-def]
    """Through the sign-in page, as a user would: it returns to ``then``, whose header names the account."""
    from urllib.parse import quote

    driver.get(f"{server.url}/sign-in?next={quote(then)}")
    assert wait_for(lambda: next(iter(driver.find_elements("id", "sign-in-link")), None), 30)
    driver.find_element("id", "name").send_keys(name)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "submit").click()
    signed = wait_for(lambda: next(iter(driver.find_elements("id", "signed-in-as")), None), 30)
    assert signed is not None, driver.find_element("id", "status").text
    assert name in signed.text and driver.current_url == server.url + then


def test_landmark_registration_in_the_browser_moves_the_overlay(  # type: ignore[no-untyped-def]
    server: Server, browser, tmp_path: Path
) -> None:
    """Place point pairs with ctrl+click, fit and save from the side panel; the open viewer updates.

    Saving a transform is a curator's: the user signs in first (an anonymous fit only previews).
    """
    import requests
    from selenium.webdriver.support.ui import Select

    base = f"{server.url}/api/datasets/correlative/images/fluorescence/transform"
    assert requests.put(base, json={"matrix": np.eye(4).tolist()}, timeout=30, headers=server.admin).ok
    sign_in(browser, server, *CURATOR, then="/datasets/correlative")
    layout = wait_for(lambda: next(iter(browser.find_elements("css selector", "#overlay select")), None), 60)
    assert layout is not None
    Select(layout).select_by_value("xy")
    token = browser.find_element("id", "viewer").get_attribute("data-token")
    assert wait_for(lambda: True if server.get(f"/api/sessions/{token}").json()["state"]["layout"] == "xy" else None)
    browser.find_element("id", "place-landmarks").click()
    assert wait_for(lambda: True if any(layer["name"] == "em landmarks"
                                        for layer in client_state(browser)["layers"]) else None, 30)
    clicks = [(-120, -80), (110, -90), (-100, 100), (130, 120)]
    shift = 40  # screen pixels: the "fluorescence" feature is drawn 40 px right of the EM one

    def client_points(name: str) -> int:
        layer = next((item for item in client_state(browser)["layers"] if item["name"] == name), {})
        return len(layer.get("annotations", []))

    assert wait_for(lambda: True if client_state(browser).get("selectedLayer", {}).get("layer") == "em landmarks"
                    else None, 30)
    ctrl_click(browser, clicks)
    assert wait_for(lambda: True if client_points("em landmarks") == 4 else None, 30)
    browser.find_element("css selector", '[data-pick="fluorescence"]').click()
    assert wait_for(lambda: True if client_state(browser)["selectedLayer"]["layer"] == "fluorescence landmarks"
                    else None, 30)
    ctrl_click(browser, [(x + shift, y) for x, y in clicks])

    def placed() -> bool | None:
        state = server.get(f"/api/sessions/{token}").json()["state"]
        counts = [len(layer.get("annotations", [])) for layer in state["layers"] if layer["type"] == "annotation"]
        return True if counts == [4, 4] else None

    assert wait_for(placed, 30), "the clicks did not reach the server's state"
    browser.find_element("id", "save-landmarks").click()
    result = wait_for(lambda: next(iter(browser.find_elements("css selector", "#registration-result table")), None), 30)
    browser.save_screenshot(str(tmp_path / "registered.png"))
    assert result is not None, browser.find_element("css selector", ".overlay-status").text
    assert len(result.find_elements("css selector", "tr")) == 5  # header + 4 pairs
    stored = requests.get(base, timeout=30).json()
    assert stored["method"] == "landmarks (viewer)" and stored["rms_nm"] < 8.0  # within a voxel
    assert stored["author"] == CURATOR[0]
    matrix = np.asarray(stored["matrix"])
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=0.02)
    assert matrix[0, 3] < -100 and abs(matrix[1, 3]) < 16  # moved left by the 40-pixel offset, in nm

    def client_moved() -> bool | None:
        layer = next(item for item in client_state(browser)["layers"] if item["name"] == "fluorescence")
        source = layer["source"]
        transform = source.get("transform", {}) if isinstance(source, dict) else {}
        translation = np.asarray(transform.get("matrix", np.zeros((3, 4))))[0, 3]
        return True if translation < -10 else None  # in reference voxels, without reloading

    assert wait_for(client_moved, 30), "the open viewer did not receive the new transform"


def test_private_dataset_is_seen_only_after_signing_in(  # type: ignore[no-untyped-def]
    server: Server, browser, tmp_path: Path
) -> None:
    """Signed in, the curator sees and opens the private dataset; signed out (or anonymous) it does not exist."""
    import requests

    sign_out = next(iter(browser.find_elements("id", "sign-out")), None)
    if sign_out is None:
        sign_in(browser, server, *CURATOR, then="/")
    # Another browser, anonymous, sees neither the dataset in the catalog nor its page.
    anonymous = requests.get(f"{server.url}/api/datasets", timeout=10).json()["datasets"]
    assert "embargoed" not in [d["name"] for d in anonymous]
    assert requests.get(f"{server.url}/datasets/embargoed", timeout=10).status_code == 404
    browser.get(server.url + "/")
    listed = wait_for(lambda: next(iter(browser.find_elements("css selector", 'a[href="/datasets/' +
                                                           _dataset_id(server, "embargoed") + '"]')), None), 30)
    assert listed is not None, "the signed-in catalog does not list the private dataset"
    listed.click()
    title = wait_for(lambda: (lambda text: text if text and text != "Loading…" else None)(
        browser.find_element("id", "title").text), 30)
    assert title == "embargoed" and "private" in browser.find_element("id", "facts").text
    token = wait_for(lambda: browser.find_element("id", "viewer").get_attribute("data-token") or None, 30)
    rendered = wait_for(lambda: True if viewer_panel(browser).std() > 20 else None, 120)
    assert rendered, "the private volume did not render"
    browser.save_screenshot(str(tmp_path / "private.png"))
    # Its viewer session is the curator's: the token alone is its credential, with the curator's rights.
    assert requests.get(f"{server.url}/api/sessions/{token}", timeout=10).status_code == 200
    browser.find_element("id", "sign-out").click()  # back to the catalog: the page it was on is private
    assert wait_for(lambda: next(iter(browser.find_elements("id", "sign-in-link")), None), 30)
    assert "signed-in-as" not in browser.page_source and browser.current_url == server.url + "/"
    browser.get(server.url + "/datasets/embargoed")
    assert '"status":404' in browser.page_source.replace(" ", "")
    browser.get(server.url + "/")
    assert wait_for(lambda: True if "Demo" in browser.find_element("id", "datasets").text else None, 30)
    assert "embargoed" not in browser.find_element("id", "datasets").text


def _dataset_id(server: Server, name: str) -> str:
    return str(server.get(f"/api/datasets/{name}", headers=server.admin).json()["id"])


def in_viewer(driver, selector: str):  # type: ignore[no-untyped-def]
    """Click an element of Neuroglancer's own interface inside the viewer iframe."""
    from selenium.common.exceptions import StaleElementReferenceException

    def click() -> bool | None:
        try:  # Neuroglancer redraws its lists as they change: find the element again until a click lands
            found = next(iter(driver.find_elements("css selector", selector)), None)
            if found is None:
                return None
            found.click()
            return True
        except StaleElementReferenceException:
            return None

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        assert wait_for(click, 30), f"the viewer shows no {selector}"
    finally:
        driver.switch_to.default_content()


SCREENSHOT = Path("/tmp/lamella-viewer-annotations.png")
SURFACE_SCREENSHOT = Path("/tmp/lamella-viewer-surface.png")


def test_annotations_drawn_in_the_viewer_are_saved_to_the_layer(  # type: ignore[no-untyped-def]
    data_dir, browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A curator makes a layer in the side panel, draws a point and a box with Neuroglancer's tools, finds them in
    the database and again after a reload, labels one in the side panel and deletes it with Neuroglancer's
    own button; an outsider sees none of it."""
    import requests
    from selenium.webdriver.support.ui import Select

    from annotations.accounts import Accounts
    from annotations.db import make_engine, make_sessions, sqlite_url
    from tests.conftest import clone_data_dir, start_server, stop_server

    root = clone_data_dir(data_dir[0], tmp_path_factory.mktemp("drawn"))
    engine = make_engine(sqlite_url(root))
    accounts = Accounts(make_sessions(engine))
    accounts.create("olga", "annotator", password="olga-password-1")  # a member of nothing
    olga = {"Authorization": f"Bearer {accounts.create_token('olga')[0]}"}
    engine.dispose()
    server = start_server(root)
    admin = {"Authorization": f"Bearer {data_dir[1].admin_token}"}
    layers = f"{server.url}/api/datasets/embargoed/annotation-layers"
    try:
        sign_in(browser, server, *CURATOR, then="/datasets/embargoed")
        form = wait_for(lambda: next(iter(browser.find_elements("css selector", ".new-layer summary")), None), 30)
        assert form is not None, browser.find_element("id", "status").text
        form.click()
        browser.find_element("id", "new-layer-name").send_keys("synapses")
        browser.find_element("css selector", '#new-layer input[value="axis_aligned_bounding_box"]').click()
        browser.find_element("id", "new-layer-labels").send_keys("synapse, vesicle")
        browser.find_element("id", "create-layer").click()
        draw = wait_for(lambda: next(iter(browser.find_elements("css selector", '[data-draw="point"]')), None), 30)
        assert draw is not None, browser.find_element("id", "annotation-status").text
        [layer] = requests.get(layers, headers=admin, timeout=30).json()["layers"]
        assert layer["spec"]["types"] == ["point", "axis_aligned_bounding_box"]
        saved = f"{layers}/{layer['id']}/annotations"

        def stored(count: int) -> list[dict] | None:  # type: ignore[type-arg]
            found = requests.get(saved, headers=admin, timeout=30).json()["annotations"]
            return found if len(found) == count else None

        draw.click()  # the side panel's tool choice: the edit layer with Neuroglancer's point tool
        assert wait_for(lambda: True if any(item["name"] == "synapses ✎" for item in client_state(browser)["layers"])
                        else None, 60)
        ctrl_click(browser, [(40, 30)])
        clicked = time.monotonic()
        assert wait_for(lambda: stored(1), 10), "the point did not reach the database"
        point_seconds = time.monotonic() - clicked
        # A point above the volume (the grey of the xz view) is outside the layer: kept, and said why.
        ctrl_click(browser, [(0, -150)], panel_index=1)
        refused = wait_for(lambda: next(iter(browser.find_elements("css selector", "[data-unsaved]")), None), 15)
        assert refused is not None
        refusal = refused.text
        assert "outside the layer's bounds" in refusal and stored(1)
        in_viewer(browser, '[title="Annotate bounding box"]')  # Neuroglancer's own tool button
        ctrl_click(browser, [(-70, -50), (-20, -10)])
        annotations = wait_for(lambda: stored(2), 10)
        assert annotations is not None, "the box did not reach the database"
        assert [a["type"] for a in annotations] == ["point", "axis_aligned_bounding_box"]
        assert {a["author"] for a in annotations} == {CURATOR[0]}
        assert point_seconds < 3, f"saved {point_seconds:.1f} s after the click"
        # A reload: the same session, its edit layer and the saved annotations are still there.
        browser.refresh()
        assert wait_for(lambda: next(iter(browser.find_elements("css selector", "[data-draw]")), None), 30)

        def drawn_in_client() -> list | None:  # type: ignore[type-arg]
            layer = next((item for item in client_state(browser)["layers"] if item["name"] == "synapses ✎"), {})
            return layer.get("annotations") if len(layer.get("annotations", [])) == 3 else None

        assert wait_for(drawn_in_client, 60), "the reloaded viewer lost the drawn annotations"
        # Moved with Neuroglancer's alt+drag after the reload (the layer's read-only view of it does not take the
        # drag: it leaves out what this viewer's edit layer holds): saved as a new version at the new place.
        [point] = [a for a in annotations if a["type"] == "point"]
        alt_drag(browser, on_screen(client_state(browser), point["point"]), (30, 0))

        def moved() -> dict | None:  # type: ignore[type-arg]
            now = next(a for a in stored(2) or [] if a["id"] == point["id"])
            return now if now["point"][0] > point["point"][0] + 20 and now["version"] > 1 else None

        after_move = wait_for(moved, 10)
        assert after_move is not None, "the moved point did not reach the database"
        assert abs(after_move["point"][1] - point["point"][1]) < 3 and after_move["point"][2] == point["point"][2]
        token = browser.find_element("id", "viewer").get_attribute("data-token")
        report = requests.get(f"{server.url}/api/sessions/{token}/annotations", timeout=30).json()
        assert sorted(report["saved"]["synapses ✎"].values()) == [a["id"] for a in annotations]
        assert [item["message"] for item in report["unsaved"]] == [refusal.removeprefix("Not saved: ")]
        assert wait_for(lambda: next(iter(browser.find_elements("css selector", "[data-unsaved]")), None), 15)
        # Select the point in Neuroglancer's list of the edit layer; label it in the side panel.
        in_viewer(browser, ".neuroglancer-annotation-list-entry")
        from selenium.common.exceptions import StaleElementReferenceException

        def label_it() -> dict | None:  # type: ignore[type-arg]
            try:  # the panel redraws the form when the selection or the record changes: find it afresh
                form = next(iter(browser.find_elements("css selector", ".annotation-form")), None)
                if form is not None:
                    Select(form.find_element("css selector", 'select[name="label"]')).select_by_value("synapse")
                    form.find_element("id", "save-annotation").click()
            except StaleElementReferenceException:
                return None
            return next((a for a in stored(2) or [] if a["label"] == "synapse"), None)

        labelled = wait_for(label_it, 30)
        assert labelled is not None, browser.find_element("id", "selected-annotation").text
        browser.save_screenshot(str(SCREENSHOT))
        # Delete it with Neuroglancer's own button: it leaves the layer, whose history keeps every version; a
        # reload shows what the database holds.
        in_viewer(browser, ".neuroglancer-selected-annotation-details-delete")
        assert wait_for(lambda: stored(1), 10), "the deleted point is still in the layer"
        history = requests.get(f"{saved}/{labelled['id']}/history", headers=admin, timeout=30).json()["versions"]
        deleted = [version["deleted"] for version in history]  # drawn, labelled (…), deleted
        assert len(deleted) >= 3 and deleted[-1] and not any(deleted[:-1]), history
        box = stored(1)[0]  # type: ignore[index]
        browser.refresh()
        assert wait_for(lambda: next(iter(browser.find_elements("css selector", "[data-draw]")), None), 30)

        def edit_layer_after_reload() -> list | None:  # type: ignore[type-arg]
            layer = next((item for item in client_state(browser)["layers"] if item["name"] == "synapses ✎"), {})
            found = layer.get("annotations", [])
            return found if len(found) == 2 else None  # the box and the point refused earlier, kept in the viewer

        assert wait_for(edit_layer_after_reload, 60), "the reloaded viewer does not show what the layer holds"
        # An annotation made elsewhere (here through the API), 30 screen pixels below where the point was drawn:
        # selected in the read-only layer, taken into the edit layer with the side panel's "Edit in viewer",
        # then moved with alt+drag. The viewer is sent a new URL of the view layer, which leaves it out.
        made = {"type": "point", "point": [point["point"][0], point["point"][1] + 30 * 1.4286, point["point"][2]]}
        [other] = requests.post(saved, json={"annotations": [made]}, headers=admin, timeout=30).json()["ids"]
        browser.refresh()
        assert wait_for(lambda: next(iter(browser.find_elements("css selector", "[data-draw]")), None), 30)
        time.sleep(3)  # the view layer's cells arrive
        def select_it() -> bool | None:  # ctrl+right-click pins the selection, or unpins one already pinned
            ctrl_right_click(browser, on_screen(client_state(browser), made["point"]))
            browser.switch_to.frame(browser.find_element("id", "viewer"))
            try:
                selection = browser.execute_script("return viewer.selectionDetailsState.toJSON() || {}")
            finally:
                browser.switch_to.default_content()
            chosen = ((selection or {}).get("layers") or {}).get("synapses") or {}
            return True if chosen.get("annotationId") == str(other) else None

        assert wait_for(select_it, 30), "the annotation made elsewhere could not be selected in the viewer"
        adopt = wait_for(lambda: next(iter(browser.find_elements("id", "edit-in-viewer")), None), 30)
        assert adopt is not None, browser.find_element("id", "selected-annotation").text
        adopt.click()

        def view_url() -> str:
            layer = next(item for item in client_state(browser)["layers"] if item["name"] == "synapses")
            source = layer["source"][0]
            return str(source["url"] if isinstance(source, dict) else source)

        assert wait_for(lambda: True if view_url().endswith(".1") else None, 30), view_url()

        def moved() -> bool | None:
            return next((True for a in stored(2) or [] if a["id"] == other and a["point"][0] > made["point"][0] + 20),
                        None)

        # The edit layer takes the annotation a moment after the new URL (a busy machine: seconds); a drag that
        # comes before it finds nothing to move, so it is tried again from where the point still is.
        for _ in range(3):
            alt_drag(browser, on_screen(client_state(browser), made["point"]), (30, 0))
            if wait_for(moved, 15):
                break
        assert moved(), stored(2)
        # Someone who may not read the private dataset: no page, no layer, no annotation, no precomputed source.
        browser.find_element("id", "sign-out").click()
        assert wait_for(lambda: next(iter(browser.find_elements("id", "sign-in-link")), None), 30)
        sign_in(browser, server, "olga", "olga-password-1", then="/")
        browser.get(f"{server.url}/datasets/embargoed")
        assert '"status":404' in browser.page_source.replace(" ", "")
        source = f"{layers}/{layer['id']}/precomputed/axis_aligned_bounding_box/current"
        assert requests.get(f"{source}/by_id/{box['id']}", headers=admin, timeout=30).status_code == 200
        for path in (layers, saved, f"{saved}/{box['id']}", f"{source}/info", f"{source}/by_id/{box['id']}"):
            assert requests.get(path, headers=olga, timeout=30).status_code == 404, path
    finally:
        stop_server(server)


def panel_image(driver, index: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One rendered panel of the viewer (4panel, in page order: xy, xz, 3D, yz) as RGB."""
    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        panel = driver.find_elements("css selector", ".neuroglancer-rendered-data-panel")[index]
        return np.asarray(Image.open(io.BytesIO(panel.screenshot_as_png)).convert("RGB")).astype(np.int16)
    finally:
        driver.switch_to.default_content()


def double_click(driver, offset: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Double-click (Neuroglancer's "select segment") at an offset from the centre of the xy view."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.switch_to.frame(driver.find_element("id", "viewer"))
    try:
        panel = driver.find_elements("css selector", ".neuroglancer-rendered-data-panel")[0]
        ActionChains(driver).move_to_element_with_offset(panel, *offset).perform()
        time.sleep(1.0)  # the pointer rests on the segment: the viewer picks it
        ActionChains(driver).double_click().perform()
    finally:
        driver.switch_to.default_content()


THREE_D = 2  # the 3D panel, bottom left in Neuroglancer's 4panel layout


def test_a_selected_mitochondrion_shows_its_surface_in_the_3d_panel(  # type: ignore[no-untyped-def]
    server: Server, browser
) -> None:
    """The demo's segmentation: centred on mitochondrion 1001, a double-click selects it and the 3D panel draws
    its mesh, a blob where the same view without a selection shows nothing."""
    import tensorstore as ts
    from scipy import ndimage

    base = f"{server.url}/api/datasets/demo/images/organelles"
    coarse = ts.open({"driver": "zarr3", "kvstore": f"{base}/zarr/2/"}).result().read().result()
    mitochondrion = 1001
    centre = np.array(ndimage.center_of_mass(coarse == mitochondrion)) * 4 + 2  # (z, y, x) level-0 voxels
    assert coarse[tuple(np.round((centre - 2) / 4).astype(int))] == mitochondrion  # the centre is inside it
    browser.get(server.url + "/datasets/demo")
    token = wait_for(lambda: browser.find_element("id", "viewer").get_attribute("data-token") or None, 60)
    assert wait_for(lambda: True if server.get(f"/api/sessions/{token}").json()["generation"] else None, 60)
    session = server.get(f"/api/sessions/{token}").json()
    state = session["state"]
    state["position"] = [float(centre[2]), float(centre[1]), float(centre[0])]
    next(layer for layer in state["layers"] if layer["name"] == "organelles")["visible"] = True  # shown
    state["showSlices"] = False  # the 3D panel shows meshes only
    state["layout"] = "4panel"  # (an earlier test of this browser left the demo's session in "xy")
    state["projectionScale"] = 300
    assert requests.put(f"{server.url}/api/sessions/{token}", json={"state": state,
                        "generation": session["generation"]}, timeout=30).ok
    assert wait_for(lambda: True if client_state(browser).get("showSlices") is False
                    and client_state(browser).get("layout") == "4panel" else None, 60)
    time.sleep(3)
    empty = panel_image(browser, THREE_D)
    double_click(browser, (0, 0))
    selected = wait_for(lambda: next((layer.get("segments") for layer in client_state(browser)["layers"]
                                      if layer["name"] == "organelles" and layer.get("segments")), None), 30)
    assert selected == [str(mitochondrion)]
    # The side panel shows what was selected, from the segment table.
    shown = wait_for(lambda: next((h.text for h in browser.find_elements(
        "css selector", '.segments[data-image="organelles"] .segment-selected h3') if h.text), None), 30)
    assert shown == "mitochondrion 1"

    def surface() -> np.ndarray | None:
        drawn = np.abs(panel_image(browser, THREE_D) - empty).max(axis=2) > 40
        return drawn if drawn.sum() > 200 else None

    drawn = wait_for(surface, 60)
    assert drawn is not None, "no surface appeared in the 3D panel"
    # One object near the centre, not noise: a single large connected blob around the panel's middle.
    browser.save_screenshot(str(SURFACE_SCREENSHOT))
    blobs, _ = ndimage.label(drawn)
    sizes = np.bincount(blobs.ravel())[1:]
    assert sizes.max() > 0.9 * drawn.sum()
    middle = np.array(ndimage.center_of_mass(blobs == sizes.argmax() + 1)) / np.array(drawn.shape)
    assert np.all(np.abs(middle - 0.5) < 0.2), middle


def test_the_segment_browser_filters_sorts_and_jumps_to_a_segment(  # type: ignore[no-untyped-def]
    server: Server, browser
) -> None:
    """Beside the viewer: the demo's segments filtered by class, largest first; a row moves the viewer to that
    segment's centre and selects it there."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/datasets/demo")
    section = '.segments[data-image="organelles"]'
    rows = f"{section} tbody tr"
    assert wait_for(lambda: True if len(browser.find_elements("css selector", rows)) > 20 else None, 60)
    browser.find_element("css selector", f"{section} .segment-filter").send_keys("mitochondrion")
    Select(browser.find_element("css selector", f"{section} .segment-sort")).select_by_value("volume_um3:desc")

    def listed() -> list[list[str]] | None:
        try:  # the table is redrawn as the filter and the order change: read it again until it holds still
            cells = [[td.text for td in row.find_elements("css selector", "td")]
                     for row in browser.find_elements("css selector", rows)]
        except StaleElementReferenceException:
            return None
        return cells if cells and all(c[2] == "mitochondrion" for c in cells) else None

    cells = wait_for(listed, 30)
    assert cells is not None, "the filter left other classes"
    table = server.get("/api/datasets/demo/images/organelles/segments?name=mitochondrion&sort=volume_um3"
                       "&order=desc&limit=50").json()["segments"]
    assert [c[0] for c in cells] == [s["id"] for s in table]  # the server's order, largest first
    time.sleep(1)  # both changes answered: the table is final
    assert [c[0] for c in wait_for(listed, 30) or []] == [s["id"] for s in table]
    browser.find_elements("css selector", rows)[0].click()
    token = browser.find_element("id", "viewer").get_attribute("data-token")

    def jumped() -> dict | None:  # type: ignore[type-arg]
        state = client_state(browser)
        layer = next(layer for layer in state["layers"] if layer["name"] == "organelles")
        return state if layer.get("segments") == [table[0]["id"]] else None

    state = wait_for(jumped, 30)
    assert state is not None, "the viewer did not select the segment"
    expected = np.array(table[0]["centroid_nm"]) / 8.0  # the demo's voxels are 8 nm
    assert np.allclose(state["position"], expected, atol=0.01)
    assert np.allclose(server.get(f"/api/sessions/{token}").json()["state"]["position"], state["position"])


LAYER_LOADED = """
const found = {};
for (const name of arguments[0]) {
  const managed = viewer.layerManager.getLayerByName(name);
  if (!managed) { found[name] = "missing"; continue; }
  const source = managed && managed.layer && managed.layer.dataSources && managed.layer.dataSources[0];
  const state = source && source.loadState;
  found[name] = state === undefined ? null : (state.error ? "error: " + state.error.message : "loaded");
}
return found;
"""

# Neuroglancer's client (2.41.2, and its main branch as of 2026-12) can drop a layer while it restores a `#!`
# state: its URL-hash binding writes the state back at most 400 ms after the restore's first change, synchronously
# from inside the restore, and an annotation layer later in the list, not yet restored, cannot be written (its
# toJSON reads a list that only its restoreState sets). The layer being restored at that moment is deleted and the
# status line shows the error. A restore that takes that long happens on a busy machine: a reload often opens the
# state, but under a sustained load every attempt can take that long.
HASH_RESTORE_RACE = "Cannot read properties of undefined (reading 'length')"
STATUS_TEXT = "return (document.getElementById('neuroglancer-status-container') || {}).textContent || ''"


def open_hash_state(browser, url: str, names: list[str], attempts: int = 3) -> tuple[dict | None, int]:  # type: ignore[no-untyped-def,type-arg]
    """Opens ``url`` (the bundled client, ``#!`` and a state) in a fresh page until the named layers have loaded
    their sources; reloads only after Neuroglancer's own hash-restore race (above). Returns what loaded (``None``
    after 120 s) and the attempts it took."""
    found: dict | None = None  # type: ignore[type-arg]
    for attempt in range(1, attempts + 1):
        browser.get("about:blank")
        browser.get(url)

        def settled() -> dict | None:  # type: ignore[type-arg]
            now = browser.execute_script(LAYER_LOADED, names)
            if all(value not in (None, "missing") for value in now.values()):
                return now
            if "missing" in now.values() and HASH_RESTORE_RACE in browser.execute_script(STATUS_TEXT):
                return {"race": now}
            return None

        found = wait_for(settled, 120)  # a new client, on a machine running other tests
        if found is None or "race" not in found:
            return found, attempt
    return found, attempts


def test_catalog_filters_narrow_the_list_and_the_copied_state_opens_in_the_bundled_client(  # type: ignore[no-untyped-def]
    server: Server, browser
) -> None:
    """The catalog's search and method filter leave the demo alone (with its thumbnail); the demo's page offers
    a Neuroglancer state to copy, which the bundled client opens (``#!`` and the state) with its image and
    annotation layers loaded."""
    import json
    from urllib.parse import quote

    from selenium.webdriver.support.ui import Select

    layers = f"{server.url}/api/datasets/demo/annotation-layers"
    made = requests.post(layers, headers=server.admin, timeout=30, json={"name": "front-door", "types": ["point"]})
    assert made.status_code == 201, made.text
    layer = made.json()
    middle = [(lo + hi) / 2 for lo, hi in zip(layer["lower_bound"], layer["upper_bound"], strict=True)]
    requests.post(f"{layers}/{layer['id']}/annotations", headers=server.admin, timeout=30,
                  json={"annotations": [{"type": "point", "point": middle}]}).raise_for_status()
    try:
        browser.get(server.url + "/")

        def listed() -> list[str]:  # read in the page at once: the list is redrawn as the filters change
            return browser.execute_script(
                "return [...document.querySelectorAll('#datasets li[data-dataset]')].map((e) => e.dataset.dataset)")

        everything = wait_for(lambda: listed() if len(listed()) >= 4 else None, 30)
        assert everything is not None and "demo" in everything, browser.find_element("id", "status").text
        browser.find_element("id", "search").send_keys("mitochondria")
        assert wait_for(lambda: True if listed() == ["demo"] else None, 15), listed()
        assert browser.find_element("id", "status").text == f"1 of {len(everything)} datasets"
        assert wait_for(lambda: browser.execute_script(
            "const i = document.querySelector('#datasets [data-dataset=demo] img.thumbnail');"
            "return i && i.complete && i.naturalWidth > 0 ? true : null;"), 30), "the thumbnail did not load"
        browser.find_element("id", "search").clear()
        browser.execute_script("document.getElementById('filters').dispatchEvent(new Event('input'))")
        assert wait_for(lambda: True if listed() == everything else None, 15)
        Select(browser.find_element("id", "filter-method")).select_by_visible_text(
            "FIB-SEM and fluorescence (simulated)")
        assert wait_for(lambda: True if listed() == ["demo"] else None, 15), listed()
        assert "method=FIB-SEM" in browser.current_url  # a filtered catalog has an address of its own
        browser.find_element("css selector", "#datasets [data-dataset=demo] h2 a").click()
        summary = wait_for(lambda: next(iter(browser.find_elements("css selector", "#standard-links summary")), None),
                           30)
        assert summary is not None, browser.find_element("id", "status").text
        summary.click()
        box = '[data-snippet="Neuroglancer state, precomputed sources"]'
        text = wait_for(lambda: next((e.get_attribute("value") for e in browser.find_elements("css selector", box)
                                      if e.get_attribute("value")), None), 30)
        assert text is not None, browser.find_element("id", "links-body").text
        state = json.loads(text)
        by_name = {item["name"]: item for item in state["layers"]}
        assert by_name["em"]["source"].startswith("precomputed://http") and "emitGrayscale" in by_name["em"]["shader"]
        assert by_name["front-door"]["source"] == [
            f"precomputed://{server.url}/api/datasets/{layer['dataset_id']}/annotation-layers/{layer['id']}"
            "/precomputed/point/current"]
        token = browser.find_element("id", "viewer").get_attribute("data-token")
        names = ["em", "front-door"]
        loaded, attempts = open_hash_state(browser, f"{server.url}/v/{token}/#!{quote(json.dumps(state))}", names, 2)
        if loaded is not None and "race" in loaded:
            # Neuroglancer's hash-restore race at every attempt (a busy machine): the same state, given to a new
            # viewer session, reaches the same client by its state-sync path, which writes back asynchronously.
            made = requests.post(f"{server.url}/api/datasets/demo/sessions", headers=server.admin, timeout=30)
            assert made.status_code == 201, made.text
            fresh = made.json()["token"]
            requests.put(f"{server.url}/api/sessions/{fresh}", headers=server.admin, timeout=30,
                         json={"state": state}).raise_for_status()
            browser.get("about:blank")
            browser.get(f"{server.url}/v/{fresh}/")
            loaded = wait_for(lambda: (lambda found: found if all(
                value not in (None, "missing") for value in found.values()) else None)(
                browser.execute_script(LAYER_LOADED, names)), 120)
        assert loaded == {"em": "loaded", "front-door": "loaded"}, (
            attempts, browser.execute_script(LAYER_LOADED, names), browser.execute_script(STATUS_TEXT))
        opened = json.loads(browser.execute_script("return JSON.stringify(viewer.state.toJSON())"))
        assert [item["name"] for item in opened["layers"]][:len(state["layers"])] == [item["name"] for item in
                                                                                     state["layers"]]
    finally:
        requests.delete(f"{layers}/{layer['id']}", headers=server.admin, timeout=30)


# Citizen Science: a project on the demo's EM, its volunteers' page and its curators' dashboard.

CROWD = "mito-hunt"
CROWD_PAGE = f"/datasets/demo/projects/{CROWD}"
CROWD_API = f"/api/datasets/demo/projects/{CROWD}"


@pytest.fixture(scope="module")
def crowd_server(data_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A server on a copy of the test data: the project and its consensus layer stay out of the demo the other
    tests see."""
    from tests.conftest import clone_data_dir, start_server, stop_server

    running = start_server(clone_data_dir(data_dir[0], tmp_path_factory.mktemp("crowd-pages")))
    running.admin_token = data_dir[1].admin_token
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def crowd_project(crowd_server: Server) -> dict:  # type: ignore[type-arg]
    """A point-marking project on the demo's EM: 8 tasks of 128 x 128 x 8 voxels, two answers each, a one-step
    tutorial with a picture."""
    server = crowd_server
    found = requests.get(server.url + CROWD_API, timeout=30)
    if found.status_code == 404:
        made = requests.post(f"{server.url}/api/datasets/demo/projects", headers=server.admin, timeout=30, json={
            "name": CROWD, "title": "Find the mitochondria", "image": "em",
            "description": "Help us map the mitochondria of these cells.",
            "workflow": {"instructions": "Ctrl+click the centre of every mitochondrion in the frame.", "tool": "point",
                         "labels": ["mitochondrion"], "task_shape": [128, 128, 8], "redundancy": 2,
                         "tutorial": [{"text": "Mitochondria are the dark ovals with pale folds inside.",
                                       "picture": {"lower": [128, 128, 124], "upper": [384, 384, 125]}}]}})
        assert made.status_code == 201, made.text
        tiled = requests.post(server.url + CROWD_API + "/tasks", headers=server.admin, timeout=30,
                              json={"lower": [128, 128, 120], "upper": [384, 384, 136]})
        assert tiled.json() == {"created": 8}, tiled.text
    return requests.get(server.url + CROWD_API, timeout=30).json()  # type: ignore[no-any-return]


def as_new_volunteer(driver, server: Server) -> None:  # type: ignore[no-untyped-def]
    """No sign-in and no volunteer cookie: the next page is seen by a new anonymous volunteer."""
    driver.get(server.url + "/static/css/lamella.css")
    driver.delete_all_cookies()
    driver.execute_script("sessionStorage.clear()")


def task_image(driver) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The middle of the task view's viewer (inside the task's frame), grey; a clipped capture, cheaper than a
    screenshot of the element, for timing."""
    import base64

    x, y, width, height = driver.execute_script(
        "const r = document.getElementById('viewer').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "clip": {"x": x + 0.3 * width, "y": y + 0.3 * height, "width": 0.4 * width,
                                  "height": 0.4 * height, "scale": 1}})
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("L"), dtype=np.int16)


def em_texture(panel: np.ndarray) -> bool:
    return bool(panel.std() > 12 and len(np.unique(panel)) > 60)


def task_shown(driver, other_than: str | None = None, before: np.ndarray | None = None  # type: ignore[no-untyped-def]
               ) -> str | None:
    """The id of the task on screen once the task view shows its image: not task ``other_than``, and unlike the
    picture ``before`` (the last task's, which the viewer shows until the new state reaches it)."""
    if driver.find_elements("css selector", "#task.offstage"):
        return None
    task = driver.find_element("id", "viewer").get_attribute("data-task")
    if not task or task == other_than:
        return None
    image = task_image(driver)
    if before is not None and (image.shape != before.shape or np.abs(image - before).mean() < 10):
        return None
    return task if em_texture(image) else None


def wait_until(predicate, seconds: float = 60, step: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def test_a_volunteer_marks_points_in_a_task_and_the_curator_sees_them(  # type: ignore[no-untyped-def]
    crowd_server: Server, browser, crowd_project
) -> None:
    """Anonymous: the project page, the tutorial with its picture, ctrl+click marks (one undone), Submit, and the
    next task; the submission holds the points, inside the task's region. Then a curator's dashboard shows it."""
    import csv
    import json

    as_new_volunteer(browser, crowd_server)
    browser.get(crowd_server.url + CROWD_PAGE + "/dashboard")  # not for volunteers
    refusal = wait_for(lambda: browser.find_element("id", "status").text or None, 30)
    assert refusal is not None and "curators" in refusal
    browser.get(crowd_server.url + CROWD_PAGE)
    take_part = wait_for(lambda: next(iter(browser.find_elements("css selector", "#take-part:not([disabled])")), None),
                         30)
    assert take_part is not None, browser.find_element("id", "intro-status").text
    assert browser.find_element("id", "title").text == "Find the mitochondria"
    assert "centre of every mitochondrion" in browser.find_element("id", "instructions").text
    assert browser.find_element("id", "sign-in-link").text == "Sign in"
    assert "You have done 0 tasks · project 0 of 8 retired" in browser.find_element("id", "intro-progress").text
    take_part.click()
    assert wait_for(lambda: True if browser.execute_script(
        "const p = document.getElementById('tutorial-picture'); return !p.hidden && p.complete && p.naturalWidth > 0"
    ) else None, 30), "the tutorial's picture did not load"
    assert "dark ovals" in browser.find_element("id", "tutorial-text").text
    start = browser.find_element("id", "tutorial-next")
    assert start.text == "Start"
    start.click()
    first = wait_for(lambda: task_shown(browser), 60)
    assert first is not None, browser.find_element("id", "status").text
    assert browser.find_element("id", "hint").text.startswith("Ctrl+click")
    assert browser.find_element("id", "label-choice").get_attribute("hidden") is not None  # one label: no choice
    assert wait_for(lambda: True if client_state(browser).get("selectedLayer", {}).get("layer") == "marks" else None)

    def marks_counted(count: int) -> bool | None:
        return True if browser.find_element("id", "marks").get_attribute("data-count") == str(count) else None

    ctrl_click(browser, [(-90, -60), (70, 50), (0, 120)])
    assert wait_for(lambda: marks_counted(3), 30), browser.find_element("id", "marks").text
    browser.find_element("id", "undo").click()  # the last one goes
    assert wait_for(lambda: marks_counted(2), 10)
    marks = next(layer for layer in client_state(browser)["layers"] if layer["name"] == "marks")["annotations"]
    drawn = sorted(tuple(a["point"][:2]) for a in marks)
    assert len(drawn) == 2
    assert browser.find_element("id", "nothing-here").get_attribute("disabled") is not None  # marks are there
    before = task_image(browser)
    browser.find_element("id", "submit").click()
    second = wait_for(lambda: task_shown(browser, other_than=first, before=before), 60)
    assert second is not None, browser.find_element("id", "status").text
    assert second != first
    assert browser.find_element("id", "marks").get_attribute("data-count") == "0"  # a fresh task, no marks
    assert "You have done 1 task ·" in browser.find_element("id", "progress").text
    # The server has the submission, with the points, inside the task's region (Zooniverse's export: x and y are
    # pixels of the region, the frame its slice).
    export = requests.get(crowd_server.url + CROWD_API + "/export?format=zooniverse", headers=crowd_server.admin,
                          timeout=30)
    rows = [row for row in csv.DictReader(io.StringIO(export.text)) if row["subject_ids"] == first]
    assert len(rows) == 1, export.text
    subject = json.loads(rows[0]["subject_data"])[first]
    lower, upper = subject["region_lower"], subject["region_upper"]
    [annotation] = json.loads(rows[0]["annotations"])
    points = sorted((mark["x"] + lower[0], mark["y"] + lower[1]) for mark in annotation["value"])
    assert np.allclose(points, drawn, atol=1e-3), (points, drawn)
    for mark in annotation["value"]:
        assert 0 <= mark["x"] <= upper[0] - lower[0] and 0 <= mark["y"] <= upper[1] - lower[1]
        assert 0 <= mark["frame"] < upper[2] - lower[2] and mark["tool_label"] == "mitochondrion"
    # A curator (of the demo for this test) finds the project on the dataset page, and its dashboard.
    members = f"{crowd_server.url}/api/datasets/demo/members/{CURATOR[0]}"
    assert requests.put(members, json={"role": "curator"}, headers=crowd_server.admin, timeout=30).ok
    try:
        sign_in(browser, crowd_server, *CURATOR, then="/datasets/demo")
        link = wait_for(lambda: next(iter(browser.find_elements(
            "css selector", f'#projects [data-project="{CROWD}"] a.dashboard-link')), None), 30)
        assert link is not None, "the dataset page does not list the project's dashboard"
        assert browser.find_element("css selector", f'#projects [data-project="{CROWD}"] a.project-link') \
            .get_attribute("href") == crowd_server.url + CROWD_PAGE
        link.click()
        submissions = wait_for(lambda: next((e.text for e in browser.find_elements(
            "css selector", '[data-figure="Submissions"]') if e.text), None), 30)
        assert submissions is not None, browser.find_element("id", "status").text
        assert int(submissions) >= 1
        bars = browser.find_elements("css selector", "#per-hour svg rect")
        assert len(bars) == 48 and int(bars[-1].get_attribute("data-value")) >= 1  # this hour's
        assert len(browser.find_elements("css selector", "#agreement svg rect")) == 10
        assert browser.find_elements("css selector", "#per-hour svg .axis text")  # labelled axes
        row = wait_for(lambda: next(iter(browser.find_elements("css selector", f'#tasks tr[data-task="{first}"]')),
                                    None), 30)
        assert row is not None and row.find_element("css selector", ".task-submissions").text == "1"
        # Pause a task from its row; resume it.
        row.find_element("css selector", '[data-action="paused"]').click()

        def task_status() -> str:
            page = requests.get(crowd_server.url + CROWD_API + "/tasks?limit=100", headers=crowd_server.admin,
                                timeout=30).json()
            return str(next(t["status"] for t in page["tasks"] if str(t["id"]) == first))

        assert wait_for(lambda: True if task_status() == "paused" else None, 15)
        resume = wait_for(lambda: next(iter(browser.find_elements(
            "css selector", f'#tasks tr[data-task="{first}"] [data-action="active"]')), None), 15)
        assert resume is not None
        resume.click()
        assert wait_for(lambda: True if task_status() == "active" else None, 15)
        assert browser.find_element("id", "export-zooniverse").get_attribute("href").endswith(
            CROWD_API + "/export?format=zooniverse")
        browser.find_element("id", "sign-out").click()
        assert wait_for(lambda: next(iter(browser.find_elements("id", "sign-in-link")), None), 30)
    finally:
        requests.delete(members, headers=crowd_server.admin, timeout=30)


@contextlib.contextmanager
def throttled(driver, latency_ms: float, bits_per_second: float,  # type: ignore[no-untyped-def]
              cache: bool = False) -> Iterator[list[str]]:
    """Chromium's network throttling (and, unless ``cache``, no HTTP cache) on the page, its frames and every
    worker it starts.

    The page's own ``Network.emulateNetworkConditions`` (and ChromeDriver's ``set_network_conditions``) leave
    dedicated workers out, and Neuroglancer fetches its chunks in one: so the throttling is set over a DevTools
    connection of our own, on the page and on each worker as it starts (paused until then). Ends when the
    connection closes. Yields the kinds of the targets throttled so far.
    """
    import itertools
    import json
    import threading

    import websocket  # websocket-client, selenium's own dependency

    address = driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
    endpoint = requests.get(f"http://{address}/json/version", timeout=10).json()["webSocketDebuggerUrl"]
    connection = websocket.create_connection(endpoint, timeout=10, suppress_origin=True, enable_multithread=True)
    ids = itertools.count(1)
    conditions = {"offline": False, "latency": latency_ms, "downloadThroughput": bits_per_second / 8,
                  "uploadThroughput": bits_per_second / 8}
    targets: list[str] = []
    done = threading.Event()

    def send(method: str, params: dict | None = None, session: str | None = None) -> None:  # type: ignore[type-arg]
        message = {"id": next(ids), "method": method, "params": params or {}}
        connection.send(json.dumps(message if session is None else {**message, "sessionId": session}))

    def listen() -> None:
        connection.settimeout(0.2)
        while not done.is_set():
            try:
                message = json.loads(connection.recv())
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            if message.get("method") == "Target.attachedToTarget":
                session = message["params"]["sessionId"]
                targets.append(message["params"]["targetInfo"]["type"])
                send("Network.enable", session=session)
                send("Network.emulateNetworkConditions", conditions, session)
                send("Network.setCacheDisabled", {"cacheDisabled": not cache}, session)
                send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True},
                     session)
                send("Runtime.runIfWaitingForDebugger", session=session)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    send("Target.attachToTarget", {"targetId": driver.current_window_handle, "flatten": True})
    try:
        assert wait_until(lambda: targets, 10), "could not throttle the page"
        time.sleep(0.3)  # its settings applied
        yield targets
    finally:
        done.set()
        reader.join(5)
        connection.close()


def test_a_volunteers_task_view_shows_its_image_within_3_s_at_2_mbit(  # type: ignore[no-untyped-def]
    crowd_server: Server, browser, crowd_project
) -> None:
    """On a connection of 2 Mbit/s with 100 ms latency (Chromium's throttling, workers included), each task view
    shows its image within 3 s: a new volunteer's first task (nothing cached, "Take part" and the tutorial's
    "Start" clicked as soon as they can be), the next one, and the open task of a volunteer who comes back.

    Measured from the click that opens the task view until its middle shows EM texture, and printed with the
    page's own load and that of the viewer's scripts.
    """
    def viewer_ready() -> bool:
        browser.switch_to.frame(browser.find_element("id", "viewer"))
        try:
            return bool(browser.execute_script("return !!(window.viewer && window.viewer.state)"))
        finally:
            browser.switch_to.default_content()

    def clickable(selector: str):  # type: ignore[no-untyped-def]
        return wait_until(lambda: next(iter(browser.find_elements("css selector", selector)), None), 60)

    as_new_volunteer(browser, crowd_server)
    with throttled(browser, latency_ms=100, bits_per_second=2_000_000) as targets:
        opened = time.monotonic()
        browser.get(crowd_server.url + CROWD_PAGE)
        clickable("#take-part:not([disabled])").click()
        page_ready = time.monotonic() - opened
        start = clickable("#tutorial:not([hidden]) #tutorial-next")
        assert start.text == "Start"
        start.click()
        clicked = time.monotonic()
        first = wait_until(lambda: task_shown(browser), 30)
        first_image, first_opened = time.monotonic() - clicked, time.monotonic() - opened
        assert first is not None, browser.find_element("id", "status").text
        assert wait_until(viewer_ready, 60, step=0.1)
        viewer_loaded = time.monotonic() - opened
        assert wait_until(lambda: browser.find_element("id", "preview").get_attribute("hidden") is not None, 30), \
            "the task's picture stayed over the viewer"
        before = task_image(browser)
        browser.find_element("id", "nothing-here").click()
        clicked = time.monotonic()
        second = wait_until(lambda: task_shown(browser, other_than=first, before=before), 30)
        next_image = time.monotonic() - clicked
        assert second is not None, browser.find_element("id", "status").text
        assert "worker" in targets, f"the viewer's workers were not throttled: {targets}"
    # The volunteer comes back (the viewer's scripts in the browser's cache, as their names are content
    # hashes) and clicks "Take part" as soon as it can be clicked: their open task, with its image.
    with throttled(browser, latency_ms=100, bits_per_second=2_000_000, cache=True):
        opened = time.monotonic()
        browser.get(crowd_server.url + CROWD_PAGE)
        clickable("#take-part:not([disabled])").click()
        clicked = time.monotonic()
        again = wait_until(lambda: task_shown(browser), 30)
        back_image, back_opened = time.monotonic() - clicked, time.monotonic() - opened
        assert again == second, browser.find_element("id", "status").text
    print(f"\nthrottled to 2 Mbit/s, 100 ms: a new volunteer's page ready {page_ready:.2f} s and the viewer's "
          f"scripts loaded {viewer_loaded:.2f} s after opening it; first task's image {first_image:.2f} s after "
          f"Start ({first_opened:.2f} s after opening the page); the next task's {next_image:.2f} s after Nothing "
          f"here; coming back: the open task's image {back_image:.2f} s after Take part ({back_opened:.2f} s "
          "after opening the page)")
    assert first_image < 3, f"the first task's image took {first_image:.2f} s"
    assert next_image < 3, f"the next task's image took {next_image:.2f} s"
    assert back_image < 3, f"the open task's image took {back_image:.2f} s on coming back"
