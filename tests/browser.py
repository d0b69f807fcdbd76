"""A real headless Chromium for the tests of the HTML reports: Debian's
`chromium` driven through Selenium and Debian's `chromium-driver` (both
installed by `make test`), nothing downloaded.

    with chromium() as browser:
        page = browser.open(path)           # from file://, waits until it is complete
        assert page.console_errors == [] and page.requests == []
        page.count(".ck-heat td.ck-cell")
        page.screenshot(path)

`requests` lists every URL the page asked for besides itself (data: URIs
of inline images aside): a report must fetch nothing. `console_errors` are
the browser's SEVERE log lines: a JavaScript error, a refused fetch, a
blocked resource.

    python -m tests.browser --screenshots docs/    # docs/report-*.png, from the fixtures
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: bounds of every wait: a busy 2-core machine, a page of 100k rows
LOAD_SECONDS = 60
WIDTH, HEIGHT = 1280, 900


@dataclass
class Page:
    """One page as it loaded: what it logged and asked for, and the driver
    to look into it further."""

    driver: object
    url: str
    seconds: float  # from the request to the document complete
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def js(self, script: str, *args):
        """The value of `script` (a function body: `return ...`) in the page."""
        return self.driver.execute_script(script, *args)

    def count(self, selector: str) -> int:
        return self.js("return document.querySelectorAll(arguments[0]).length", selector)

    def elements(self) -> int:
        """How many elements the page's DOM holds now."""
        return self.js("return document.getElementsByTagName('*').length")

    def attributes(self, selector: str, name: str) -> list[str]:
        return self.js("return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]))",
                       selector, name)

    def texts(self, selector: str) -> list[str]:
        return self.js("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", selector)

    def screenshot(self, path: Path, full: bool = True, height: int = 8000) -> Path:
        """A PNG of the page (the whole of it, up to `height` pixels, if
        `full`; else the window)."""
        shot = {"format": "png", "captureBeyondViewport": full}
        if full:
            size = self.js("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            shot["clip"] = {"x": 0, "y": 0, "width": max(size[0], WIDTH), "height": min(size[1], height), "scale": 1}
        data = self.driver.execute_cdp_cmd("Page.captureScreenshot", shot)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def refresh_logs(self) -> None:
        """Adds what the page logged and asked for since it loaded (after
        clicks: a table's next page, an opened section)."""
        errors, requests = _drain(self.driver, self.url)
        self.console_errors += errors
        self.requests += requests


def _drain(driver, url: str) -> tuple[list[str], list[str]]:
    """The SEVERE console lines and the URLs the page `url` requested (other
    than itself and data: URIs) logged since the last call (the browser's
    own pages, such as the first new tab's, are not the report's)."""
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent" and message["params"].get("documentURL") == url:
            asked = message["params"]["request"]["url"]
            if asked != url and not asked.startswith("data:"):
                requests.append(asked)
    return errors, requests


class Browser:
    """A headless Chromium; `open` loads one page after another in it."""

    def __init__(self, driver):
        self.driver = driver

    def open(self, path: Path) -> Page:
        """Loads `path` from file://, waits (bounded) until the document is
        complete (its inline scripts run), and collects its logs."""
        _drain(self.driver, "")  # what earlier pages left
        url = Path(path).resolve().as_uri()
        began = time.monotonic()
        self.driver.get(url)
        deadline = began + LOAD_SECONDS
        # inline scripts have run once the document is complete
        while self.driver.execute_script("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} was not ready within {LOAD_SECONDS} s")
            time.sleep(0.05)
        page = Page(self.driver, url, time.monotonic() - began)
        page.refresh_logs()
        return page


def _options(profile: str):
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--disable-extensions", "--disable-sync", "--mute-audio", f"--user-data-dir={profile}",
                     f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return options


@contextlib.contextmanager
def chromium():
    """A Browser, quit (and its profile folder removed) on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(program):
            raise RuntimeError(f"{program} is missing: `make test-deps` installs chromium and chromium-driver")
    profile = tempfile.mkdtemp(prefix="ckptfs-chromium-")
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=_options(profile))
        driver.set_page_load_timeout(LOAD_SECONDS)
        driver.set_script_timeout(LOAD_SECONDS)
        yield Browser(driver)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


#: the test modules whose reports are photographed: each holds
#: `SCREENSHOTS = {name: make}`, `make(folder)` writing a report there from the
#: repository's fixtures and returning its path (docs/report-NAME.png)
SCREENSHOT_MODULES: tuple[str, ...] = ("tests.test_report_diff", "tests.test_report_info")


def screenshots(folder: Path) -> list[Path]:
    """docs/report-*.png: each report of SCREENSHOT_MODULES, opened here and
    photographed into `folder` (made if missing)."""
    makers = {}
    for module in SCREENSHOT_MODULES:
        makers.update(importlib.import_module(module).SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with chromium() as browser, tempfile.TemporaryDirectory() as tmp:
        for name, make in makers.items():
            page = browser.open(make(Path(tmp)))
            if page.console_errors or page.requests:
                raise RuntimeError(f"report {name}: {page.console_errors} {page.requests}")
            written.append(page.screenshot(folder / f"report-{name}.png", height=1500))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, metavar="FOLDER", required=True)
    for path in screenshots(parser.parse_args().screenshots):
        print(path)


if __name__ == "__main__":
    main()
