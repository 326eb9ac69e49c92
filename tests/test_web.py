"""The search page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver`` packages) driven by Selenium, against uvicorn serving the app over real HTTP
on 127.0.0.1.

Screenshots go to the test's tmp_path, and also to $INFOMAX_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from test_service import copy_index, free_port, index_template  # noqa: F401 (fixture)

from service.app import create_app
from service.settings import Settings

KEY = "page-key-123"


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """An app sets torch's (process-wide) thread count; later test modules keep their own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _require_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not chromium or not driver:
        pytest.fail(
            "the browser test needs Debian's `chromium` and `chromium-driver` packages and the `selenium` "
            "pip package (apt-get install chromium chromium-driver; pip install selenium)",
            pytrace=False,
        )
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class LiveServer:
    """uvicorn running the app in a thread of this process (real sockets, real HTTP)."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def index_folder(index_template, tmp_path_factory) -> Path:  # noqa: F811
    return copy_index(index_template, tmp_path_factory.mktemp("web") / "index")


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("INFOMAX_SCREENSHOT_DIR"):
        out = Path(os.environ["INFOMAX_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def _wait(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _hit_ids(driver) -> list[int]:
    # read in one script: the grid may be replaced between two WebDriver calls
    return driver.execute_script("return [...document.querySelectorAll('#results .hit')].map(e => Number(e.dataset.id));")


def _all_pictures_loaded(driver, grid: str) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0] + ' img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth === 32);",
        grid,
    )


def test_upload_shows_neighbours_and_clicking_searches_from_them(
    browser,
    index_folder,
    index_template,
    tmp_path,  # noqa: F811
    tiny_artifact,
):
    by = "css selector"
    with LiveServer(Settings(artifact=tiny_artifact, index=index_folder)) as live:
        browser.get(live.url + "/")
        # a random sample of the index, every picture loaded
        _wait(browser, lambda d: len(d.find_elements(by, "#sample .card")) == 24)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#sample"))
        info = browser.find_element("id", "info").text
        assert "300 images" in info and "32-d codes" in info, info

        # upload an image through the file input: it comes back first, with score 1
        query = tmp_path / "query.png"
        query.write_bytes(index_template["pngs"][5])
        browser.find_element("id", "file").send_keys(str(query))
        _wait(browser, lambda d: len(_hit_ids(d)) == 12)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#results"))
        assert _hit_ids(browser)[0] == 5
        first = browser.find_elements(by, "#results .hit")[0]
        assert first.find_element(by, ".score").text == "1.000"
        assert "label" in first.text
        assert "neighbours in" in browser.find_element("id", "status").text
        api = httpx.post(
            live.url + "/v1/search", files={"file": ("q.png", query.read_bytes(), "image/png")}, data={"k": "12"}
        ).json()
        assert _hit_ids(browser) == [n["id"] for n in api["neighbors"]]
        screenshot(browser, tmp_path, "web-upload.png")

        # clicking a result searches from that item (by id: the item itself left out)
        second = _hit_ids(browser)[1]
        browser.find_elements(by, "#results .hit")[1].click()
        _wait(
            browser,
            lambda d: (
                f"item #{second}" in d.find_element("id", "query-caption").text
                and second not in _hit_ids(d)
                and len(_hit_ids(d)) == 12
            ),
        )
        expected = httpx.post(live.url + "/v1/search", json={"id": second, "k": 12}).json()
        _wait(browser, lambda d: _hit_ids(d) == [n["id"] for n in expected["neighbors"]])

        # clicking a picture of the sample does the same
        sample = browser.find_elements(by, "#sample .card")[3]
        sample_id = int(sample.get_attribute("data-id"))
        sample.click()
        _wait(
            browser,
            lambda d: (
                f"item #{sample_id}" in d.find_element("id", "query-caption").text
                and len(_hit_ids(d)) == 12
                and sample_id not in _hit_ids(d)
            ),
        )

        # dropping a file on the drop zone (a real DataTransfer, as a drag from the desktop makes)
        browser.execute_script(
            """
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        """,
            __import__("base64").b64encode(index_template["pngs"][77]).decode(),
        )
        _wait(browser, lambda d: "dropped.png" in d.find_element("id", "query-caption").text and (_hit_ids(d) or [None])[0] == 77)
        screenshot(browser, tmp_path, "web-drop.png")

        # a file that is not an image: the page shows the server's explanation
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"just text, not a picture")
        browser.find_element("id", "file").send_keys(str(bad))
        _wait(browser, lambda d: "not an image" in d.find_element("id", "status").text)
        assert "error" in browser.find_element("id", "status").get_attribute("class")
        assert _hit_ids(browser) == []


def test_page_asks_for_the_key_when_reads_need_one(browser, index_folder, index_template, tmp_path, tiny_artifact):  # noqa: F811
    settings = Settings(artifact=tiny_artifact, index=index_folder, read_only=True, api_key=KEY, api_key_for_reads=True)
    with LiveServer(settings) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: "API key required" in d.find_element("id", "status").text)
        assert browser.find_elements("css selector", "#sample .card") == []
        browser.find_element("css selector", "details summary").click()
        key_input = browser.find_element("id", "apikey")
        key_input.send_keys(KEY)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key_input)
        # pictures need the key too: the page fetches them with it and shows blobs
        _wait(browser, lambda d: len(d.find_elements("css selector", "#sample .card")) == 24)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#sample"))
        query = tmp_path / "query.png"
        query.write_bytes(index_template["pngs"][9])
        browser.find_element("id", "file").send_keys(str(query))
        _wait(browser, lambda d: (_hit_ids(d) or [None])[0] == 9)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#results"))
        screenshot(browser, tmp_path, "web-key.png")
        assert browser.execute_script("return sessionStorage.getItem('infomax-api-key')") == KEY


def test_filters_by_class_and_folder(browser, index_folder, index_template, tmp_path, tiny_artifact):  # noqa: F811
    """The class select (the labels of /v1/info) and the folder box (a source prefix) filter every
    search, by upload and by click; changing one searches again; nothing matching says so."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    by = "css selector"
    with LiveServer(Settings(artifact=tiny_artifact, index=index_folder)) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: len(d.find_elements(by, "#sample .card")) == 24)
        labels = httpx.get(live.url + "/v1/info").json()["filters"]["labels"]
        assert labels == sorted(set(index_template["labels"]))
        options = browser.execute_script(
            "return [...document.querySelectorAll('#filter-class option')].map(o => [o.value, o.textContent]);"
        )
        assert options == [["", "any class"]] + [[str(lab), f"label {lab}"] for lab in labels]

        def api(flt: dict, *, file: bytes | None = None, item: int | None = None) -> list[int]:
            if file is not None:
                r = httpx.post(
                    live.url + "/v1/search",
                    files={"file": ("q.png", file, "image/png")},
                    data={"k": "12", "filter": json.dumps(flt)},
                )
            else:
                r = httpx.post(live.url + "/v1/search", json={"id": item, "k": 12, "filter": flt})
            assert r.status_code == 200, r.text
            return [n["id"] for n in r.json()["neighbors"]]

        # a class, then an upload: only that class comes back, as the API answers it
        png = index_template["pngs"][5]
        Select(browser.find_element("id", "filter-class")).select_by_value("3")
        query = tmp_path / "query.png"
        query.write_bytes(png)
        browser.find_element("id", "file").send_keys(str(query))
        expected = api({"label": 3}, file=png)
        assert len(expected) == 12 and all(index_template["labels"][i] == 3 for i in expected)
        _wait(browser, lambda d: _hit_ids(d) == expected)
        assert "only class label 3" in browser.find_element("id", "status").text

        # a folder as well (Enter): the same query searched again among fewer items
        folder = browser.find_element("id", "filter-folder")
        folder.send_keys("cifar10:test:1", Keys.ENTER)
        both = {"label": 3, "source": {"prefix": "cifar10:test:1"}}
        expected = api(both, file=png)
        matching = [
            i
            for i in range(len(index_template["labels"]))
            if index_template["labels"][i] == 3 and f"cifar10:test:{i}".startswith("cifar10:test:1")
        ]
        assert len(expected) == min(12, len(matching)) and set(expected) <= set(matching)  # fewer only when fewer match
        _wait(browser, lambda d: _hit_ids(d) == expected)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#results"))
        screenshot(browser, tmp_path, "web-filter.png")

        # clicking a result searches from it under the same filter
        first = _hit_ids(browser)[0]
        browser.find_elements(by, "#results .hit")[0].click()
        expected = api(both, item=first)
        _wait(browser, lambda d: f"item #{first}" in d.find_element("id", "query-caption").text and _hit_ids(d) == expected)

        # a folder nothing is in
        folder.clear()
        folder.send_keys("holidays/", Keys.ENTER)
        _wait(browser, lambda d: "No image matches the filter." in d.find_element("id", "results").text)
        assert _hit_ids(browser) == []

        # no filter: 12 neighbours again, any class
        folder.clear()
        folder.send_keys(Keys.ENTER)
        Select(browser.find_element("id", "filter-class")).select_by_value("")
        expected = httpx.post(live.url + "/v1/search", json={"id": first, "k": 12}).json()
        _wait(browser, lambda d: _hit_ids(d) == [n["id"] for n in expected["neighbors"]])


# ----------------------------------------------------------------------------- why two images match

_TOP, _BOTTOM = (252, 253, 191), (0, 0, 4)  # the two ends of the page's colour map (magma)


def _heat(driver) -> list:
    """Per result card: [id, canvas w, h, RGBA pixels, computed display, style width] ([id] alone
    without a canvas); read in one script."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results .hit')].map(f => {
          const c = f.querySelector('canvas.heat');
          if (!c) return [Number(f.dataset.id)];
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          return [Number(f.dataset.id), c.width, c.height, Array.from(d), getComputedStyle(c).display, c.style.width];
        });""")


def _cells(pixels: list[int], w: int, h: int) -> list[list[tuple[int, int, int]]]:
    return [[tuple(pixels[4 * (y * w + x) : 4 * (y * w + x) + 3]) for x in range(w)] for y in range(h)]


def _placed(driver) -> bool:
    """Every result card has its map, laid over its picture (done once the picture has loaded)."""
    cards = _heat(driver)
    return bool(cards) and all(len(c) > 1 and c[5] == "100%" for c in cards)


def _assert_drawn(cards: list, answer: dict, lo=None, hi=None) -> None:
    """Each card's canvas is its neighbour's map: one pixel per position, top row first, and the
    brighter the pixel the higher the score (magma's luminance rises throughout); the lowest and
    highest score of the scale get the ends of the colour map."""
    assert [c[0] for c in cards] == [n["id"] for n in answer["neighbors"]]
    for card, n in zip(cards, answer["neighbors"]):
        m = n["explain"]
        _, w, h, pixels, display, width = card
        assert (w, h) == (m["w"], m["h"]) and display != "none" and width == "100%"
        cells = _cells(pixels, w, h)
        lum = [[0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in row] for row in cells]
        flat = [(m["scores"][y][x], lum[y][x], cells[y][x]) for y in range(h) for x in range(w)]
        for s_a, l_a, _ in flat:
            for s_b, l_b, _ in flat:
                if s_a < s_b - 1e-6:
                    assert l_a <= l_b + 1e-9, (n["id"], s_a, s_b, l_a, l_b)
        low, high = (m["min"], m["max"]) if lo is None else (lo, hi)
        for s, _, colour in flat:
            if s == high:
                assert colour == _TOP, (n["id"], colour)
            if s == low:
                assert colour == _BOTTOM, (n["id"], colour)


def test_why_overlays_each_result_with_where_it_agrees(
    browser,
    index_folder,
    index_template,
    tmp_path,  # noqa: F811
    tiny_artifact,
):
    """The "why?" toggle: searches ask for explain and each result gets its heat map drawn over
    it (the maps of the API, per picture or on one scale), by upload and by click; off hides them."""
    from selenium.webdriver.support.ui import Select

    by = "css selector"
    with LiveServer(Settings(artifact=tiny_artifact, index=index_folder)) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: len(d.find_elements(by, "#sample .card")) == 24)
        toggle = browser.find_element("id", "explain")
        assert toggle.is_enabled() and not toggle.is_selected()
        assert not browser.find_element("id", "explain-legend").is_displayed()

        # a search without "why?": no maps
        png = index_template["pngs"][5]
        query = tmp_path / "query.png"
        query.write_bytes(png)
        browser.find_element("id", "file").send_keys(str(query))
        _wait(browser, lambda d: len(_hit_ids(d)) == 12)
        assert all(len(c) == 1 for c in _heat(browser))

        # "why?" on: the same query is searched again with explain, every result gets its map
        toggle.click()
        _wait(browser, lambda d: len(_heat(d)) == 12 and _placed(d))
        assert browser.find_element("id", "explain-legend").is_displayed()
        answer = httpx.post(
            live.url + "/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "12", "explain": "true"}
        ).json()
        _assert_drawn(_heat(browser), answer)
        pic = browser.find_elements(by, "#results .hit .pic")[0]
        assert "agrees with the query" in pic.get_attribute("title")
        screenshot(browser, tmp_path, "web-why.png")

        # one scale for all results: the extremes of the whole answer get the ends of the colour map
        Select(browser.find_element("id", "explain-scale")).select_by_value("all")
        lo = min(n["explain"]["min"] for n in answer["neighbors"])
        hi = max(n["explain"]["max"] for n in answer["neighbors"])
        _wait(browser, lambda d: sum(_TOP in (c for row in _cells(x[3], x[1], x[2]) for c in row) for x in _heat(d)) == 1)
        _assert_drawn(_heat(browser), answer, lo, hi)
        Select(browser.find_element("id", "explain-scale")).select_by_value("each")

        # clicking a result searches from it (by id), maps included
        second = _hit_ids(browser)[1]
        browser.find_elements(by, "#results .hit")[1].click()
        expected = httpx.post(live.url + "/v1/search", json={"id": second, "k": 12, "explain": True}).json()
        _wait(browser, lambda d: _hit_ids(d) == [n["id"] for n in expected["neighbors"]] and _placed(d))
        _assert_drawn(_heat(browser), expected)

        # "why?" off: the maps are hidden at once, and the next search does not ask for them
        toggle.click()
        _wait(browser, lambda d: all(c[4] == "none" for c in _heat(d)))
        assert not browser.find_element("id", "explain-legend").is_displayed()
        again = tmp_path / "again.png"  # another file: choosing the same one fires no change event
        again.write_bytes(png)
        browser.find_element("id", "file").send_keys(str(again))
        _wait(
            browser,
            lambda d: (
                "again.png" in d.find_element("id", "query-caption").text
                and _hit_ids(d) == [n["id"] for n in answer["neighbors"]]
                and all(len(c) == 1 for c in _heat(d))
            ),
        )


def test_why_is_disabled_with_the_reason_when_the_model_cannot_explain(
    browser,
    index_folder,
    tmp_path,  # noqa: F811
    tiny_artifact,
):
    from infomax.explain import remove_local_critic

    plain = tmp_path / "no-critic"
    shutil.copytree(tiny_artifact, plain)
    remove_local_critic(plain)  # same weights, no critic: what a beta-0 model exports
    with LiveServer(Settings(artifact=plain, index=index_folder)) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: len(d.find_elements("css selector", "#sample .card")) == 24)
        assert not browser.find_element("id", "explain").is_enabled()
        hint = browser.find_element("id", "explain-hint")
        assert hint.is_displayed() and "cannot show why" in hint.text and "beta 0" in hint.text
        browser.find_elements("css selector", "#sample .card")[0].click()
        _wait(browser, lambda d: len(_hit_ids(d)) == 12)
        assert all(len(c) == 1 for c in _heat(browser))
