"""Start the what-if page with `streamlit run`, open it in headless Chromium, save a screenshot.

    python scripts/screenshot_app.py [--out docs/app.png]

Needs the `[app]` and `[dev]` extras (streamlit, selenium) and Debian's `chromium` and
`chromium-driver` packages. The helpers here are also used by tests/test_app_browser.py.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
WINDOW = (1500, 1700)


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed, else None."""
    chromium = next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    driver = next((p for p in CHROMEDRIVER_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, timeout_s: float = 60.0) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port, headless, no telemetry; returns once it answers.

    Raises RuntimeError (with the server's output) when it does not come up in time."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.25)
    stop_app(proc)
    raise RuntimeError(f"streamlit did not answer on port {port} within {timeout_s:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_browser(chromium: str, chromedriver: str):
    """A headless Chromium driven through Debian's chromedriver (Selenium Manager never downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def wait_for_text(driver, text: str, timeout_s: float = 30.0) -> None:
    """Wait until the page's visible text contains `text`. Raises selenium's TimeoutException."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def wait_until_idle(driver, timeout_s: float = 30.0) -> None:
    """Wait until Streamlit has finished running the script (stApp's data-test-script-state)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def idle(d) -> bool:
        apps = d.find_elements(By.CSS_SELECTOR, "[data-testid='stApp']")
        return bool(apps) and apps[0].get_attribute("data-test-script-state") == "notRunning"

    WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(idle)


def choose_radio(driver, option: str, timeout_s: float = 30.0) -> None:
    """Click the sidebar radio button labelled `option` (e.g. the method 'full') once it is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    xpath = (
        "//*[@data-testid='stSidebar']//label[@data-testid='stRadioOption' or @data-baseweb='radio']"
        f"[.//p[normalize-space()='{option}']]"
    )
    WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(ec.element_to_be_clickable((By.XPATH, xpath))).click()


def verdict_text(driver) -> str:
    """The text of the first alert in the main area (the fit verdict)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "[data-testid='stMain'] [data-testid='stAlert']").text


def save(driver, out: Path) -> Path:
    """Save a PNG of the page once Streamlit is idle and the charts have drawn."""
    wait_until_idle(driver)
    time.sleep(1.0)  # vega-lite draws the charts after the script run ends
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out


def screenshot(out: Path, port: int | None = None) -> Path:
    """docs/app.png: the page as it opens (Llama-3.1-8B QLoRA on an RTX 4090)."""
    paths = browser_paths()
    if paths is None:
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    port = port or free_port()
    proc = start_app(port)
    driver = open_browser(*paths)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_for_text(driver, "how accurate is this?", timeout_s=60)
        wait_for_text(driver, "Fits on rtx-4090")
        save(driver, out)
    finally:
        driver.quit()
        stop_app(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    args = parser.parse_args()
    print(screenshot(args.out))


if __name__ == "__main__":
    main()
