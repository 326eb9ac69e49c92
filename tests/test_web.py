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
        pytest.fail("the browser test needs Debian's `chromium` and `chromium-driver` packages and the `selenium` "
                    "pip package (apt-get install chromium chromium-driver; pip install selenium)", pytrace=False)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1000", "--disable-extensions"):
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
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .hit')].map(e => Number(e.dataset.id));")


def _all_pictures_loaded(driver, grid: str) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0] + ' img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth === 32);", grid)


def test_upload_shows_neighbours_and_clicking_searches_from_them(browser, index_folder, index_template, tmp_path,  # noqa: F811
                                                                  tiny_artifact):
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
        api = httpx.post(live.url + "/v1/search", files={"file": ("q.png", query.read_bytes(), "image/png")},
                         data={"k": "12"}).json()
        assert _hit_ids(browser) == [n["id"] for n in api["neighbors"]]
        screenshot(browser, tmp_path, "web-upload.png")

        # clicking a result searches from that item (by id: the item itself left out)
        second = _hit_ids(browser)[1]
        browser.find_elements(by, "#results .hit")[1].click()
        _wait(browser, lambda d: f"item #{second}" in d.find_element("id", "query-caption").text
              and second not in _hit_ids(d) and len(_hit_ids(d)) == 12)
        expected = httpx.post(live.url + "/v1/search", json={"id": second, "k": 12}).json()
        _wait(browser, lambda d: _hit_ids(d) == [n["id"] for n in expected["neighbors"]])

        # clicking a picture of the sample does the same
        sample = browser.find_elements(by, "#sample .card")[3]
        sample_id = int(sample.get_attribute("data-id"))
        sample.click()
        _wait(browser, lambda d: f"item #{sample_id}" in d.find_element("id", "query-caption").text
              and len(_hit_ids(d)) == 12 and sample_id not in _hit_ids(d))

        # dropping a file on the drop zone (a real DataTransfer, as a drag from the desktop makes)
        browser.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        """, __import__("base64").b64encode(index_template["pngs"][77]).decode())
        _wait(browser, lambda d: "dropped.png" in d.find_element("id", "query-caption").text
              and (_hit_ids(d) or [None])[0] == 77)
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
            "return [...document.querySelectorAll('#filter-class option')].map(o => [o.value, o.textContent]);")
        assert options == [["", "any class"]] + [[str(lab), f"label {lab}"] for lab in labels]

        def api(flt: dict, *, file: bytes | None = None, item: int | None = None) -> list[int]:
            if file is not None:
                r = httpx.post(live.url + "/v1/search", files={"file": ("q.png", file, "image/png")},
                               data={"k": "12", "filter": json.dumps(flt)})
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
        matching = [i for i in range(len(index_template["labels"]))
                    if index_template["labels"][i] == 3 and f"cifar10:test:{i}".startswith("cifar10:test:1")]
        assert len(expected) == min(12, len(matching)) and set(expected) <= set(matching)  # fewer only when fewer match
        _wait(browser, lambda d: _hit_ids(d) == expected)
        _wait(browser, lambda d: _all_pictures_loaded(d, "#results"))
        screenshot(browser, tmp_path, "web-filter.png")

        # clicking a result searches from it under the same filter
        first = _hit_ids(browser)[0]
        browser.find_elements(by, "#results .hit")[0].click()
        expected = api(both, item=first)
        _wait(browser, lambda d: f"item #{first}" in d.find_element("id", "query-caption").text
              and _hit_ids(d) == expected)

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
