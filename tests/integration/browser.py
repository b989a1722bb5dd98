"""Debian's headless chromium driven by selenium through chromium-driver (no browser is
downloaded): the browser tests' one way to open a page (test_visualizer.py,
test_dockercoins.py)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags that work here as root, with no network and no GPU; the profile dir is fresh.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
)


@contextlib.contextmanager
def chromium(log_dir: Path) -> Iterator[WebDriver]:
    """A browser with a profile dir of its own; both gone when the block ends."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            pytest.fail(f"{tool} is missing: scripts/setup.sh installs it", pytrace=False)
    profile = Path(tempfile.mkdtemp(prefix="shoal-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = DriverService(str(CHROMEDRIVER), log_output=str(log_dir / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()  # the browser, then its driver
    finally:
        shutil.rmtree(profile, ignore_errors=True)
