"""Serving a page and driving it in headless Chromium, for the demo's tests (Debian's chromium and
chromium-driver; .ci/run installs them)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo.py")


def skip_without_browser() -> None:
  if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(
        f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)"
    )
  pytest.importorskip("selenium", reason="selenium is in requirements-demo.txt")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_until_served(server: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if server.poll() is not None:
      pytest.fail(f"demo.py exited with {server.returncode}: {log.read_text()[-3000:]}")
    try:
      with urllib.request.urlopen(url, timeout=5) as response:
        if response.status == 200:
          return
    except OSError:
      time.sleep(1)
  pytest.fail(f"demo.py did not serve {url} in {timeout} s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve_demo(flags: list[str], log: Path, *, cwd: str | None = None, env=None):
  """demo.py with ``flags`` on a free local port, in its own process as a user starts it (from
  ``cwd``, where the workdirs' data paths resolve; its output in ``log``); yields the page's URL."""
  port = free_port()
  with open(log, "w") as out:
    server = subprocess.Popen(
        [sys.executable, DEMO, *flags, f"--port={port}"],
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
  try:
    url = f"http://127.0.0.1:{port}/"
    wait_until_served(server, url, log)
    yield url
  finally:
    server.terminate()
    server.wait(timeout=30)


@contextlib.contextmanager
def open_browser(tmp_path: Path):
  """A headless Chromium (selenium's driver), its profile under ``tmp_path``; quit on exit."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  # No network beyond localhost here: without the background-networking flags Chromium keeps
  # trying to reach Google's hosts.
  for flag in (
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      f"--user-data-dir={tmp_path / 'chromium'}",
      "--window-size=1400,1500",
  ):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  try:
    yield driver
  finally:
    driver.quit()


def ask_synthetic(driver, url: str, vid: str, picked_label: str, queries: list[str]) -> None:
  """On demo.py's synthetic page: picks video ``vid`` and its annotated query ``picked_label`` (whose
  text must be ``queries[0]``), types the other queries under it, presses Find moments and waits for
  the answer (moments or a message)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  driver.get(url)
  wait = WebDriverWait(driver, 60)

  def choose(elem_id: str, option: str) -> None:  # Gradio's dropdown: type to filter, click
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input"))
    box.click()
    box.send_keys(option)
    wait.until(
        lambda d: d.find_element(By.XPATH, f"//ul//li[contains(., {json.dumps(option)})]")
    ).click()

  choose("lmr-feature-video", vid)
  wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lmr-strip .lmr-event"))
  choose("lmr-annotated", picked_label)
  textarea = driver.find_element(By.CSS_SELECTOR, "#lmr-queries textarea")
  wait.until(lambda d: textarea.get_attribute("value") == queries[0])
  for query in queries[1:]:
    textarea.send_keys("\n" + query)
  driver.find_element(By.CSS_SELECTOR, "#lmr-run").click()
  WebDriverWait(driver, 300).until(
      lambda d: d.find_elements(By.CSS_SELECTOR, "#lmr-timeline .lmr-query, #lmr-status .lmr-error")
  )
