"""The what-if page in a real browser: `streamlit run app.py` on localhost, headless Chromium.

Skipped when Debian's chromium / chromium-driver (installed by .ci/run), selenium or streamlit are missing.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="needs the [app] extra")
pytest.importorskip("selenium", reason="needs selenium (dev extra)")

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_app.py"
_spec = importlib.util.spec_from_file_location("screenshot_app", _SCRIPT)
shot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shot)

BROWSER = shot.browser_paths()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def page():
    port = shot.free_port()
    server = shot.start_app(port)
    driver = None
    try:
        driver = shot.open_browser(*BROWSER)
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shot.stop_app(server)


def test_changing_the_method_in_the_browser_flips_the_verdict(page, tmp_path):
    shot.wait_for_text(page, "Fits on rtx-4090", timeout_s=60)
    shot.wait_for_text(page, "how accurate is this?", timeout_s=60)
    assert shot.verdict_text(page).startswith("Fits on rtx-4090")
    shot.wait_until_idle(page)
    shot.save(page, tmp_path / "app.png")
    assert (tmp_path / "app.png").stat().st_size > 10_000

    shot.choose_radio(page, "full")
    shot.wait_for_text(page, "Does not fit on rtx-4090")
    assert shot.verdict_text(page).startswith("Does not fit on rtx-4090")
    shot.wait_for_text(page, "what would make it fit")
