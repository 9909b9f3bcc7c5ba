"""A headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) for tests that look
at a page the way a person does: the MLflow UI renders everything in the browser, so what it shows
is only known after its scripts ran."""
from __future__ import annotations

import time
from contextlib import contextmanager

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The machine's network is closed: without these, Chromium's background connections are refused
# many at a time and each start tries to look up Google's hosts.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1400,1000")


@contextmanager
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver, url: str, *needles: str, timeout: float = 60.0) -> str:
    """The visible text of `url` once every needle shows (or whatever it shows after `timeout`)."""
    driver.get(url)
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(n in text for n in needles):
            break
        time.sleep(0.5)
    return text
