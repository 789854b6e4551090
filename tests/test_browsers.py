"""The browser fixture (tests/browsers.py): a missing browser skips, unless it is required.

Each case runs pytest in a subprocess on one browser test, with
``STREAMKIT_CHROMIUM`` pointing at no file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_browser_test(tmp_path: Path, *, required: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMKIT_CHROMIUM": str(tmp_path / "no-such-browser")}
    env["STREAMKIT_REQUIRE_SERVERS"] = "1" if required else "0"
    test = "tests/test_dashboard_browser.py::test_the_offline_check_sees_a_request"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("required", [False, True], ids=["optional", "required"])
def test_a_missing_browser(tmp_path: Path, required: bool) -> None:
    result = run_browser_test(tmp_path, required=required)
    reason = f"STREAMKIT_CHROMIUM={tmp_path / 'no-such-browser'} is not an executable file"
    assert reason in result.stdout, result.stdout
    if required:
        assert result.returncode == 1, result.stdout
        assert "1 error" in result.stdout
        assert "headless Chromium is required (STREAMKIT_REQUIRE_SERVERS=1)" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "1 skipped" in result.stdout
