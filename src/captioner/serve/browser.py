"""Driving the demo from a program: start ``captioner serve`` and a headless Chromium (Selenium).

Used by the browser tests and by tools/screenshots.py. Needs Debian's chromium and chromium-driver
(``apt-get install chromium chromium-driver``) and the ``selenium`` package (the dev extra).
"""

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# without the background-networking flags Chromium keeps trying to reach Google's hosts, which a closed
# network refuses many times a second
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def chromium(profile_dir: str | Path, width: int = 1280, height: int = 1000):
    """A headless Chromium WebDriver with a fresh profile in ``profile_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """The base URL of a running server (a str), with the server's process id as ``.pid``."""

    pid: int


@contextmanager
def running_server(models: list[str], timeout: float = 60, extra_args: tuple[str, ...] = ()):
    """``captioner serve --model M ...`` on a free loopback port; yields its base URL (a :class:`Server`)."""
    port = free_port()
    cmd = [sys.executable, "-m", "captioner.cli", "serve", "--port", str(port), *extra_args]
    for m in models:
        cmd += ["--model", m]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = Server(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"{url}/api/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"captioner serve did not start:\n{proc.stdout.read()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
