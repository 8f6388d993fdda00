"""bench/web.py runs end to end: real uvicorn servers, a login over HTTP, load, the table.

Nothing here is timed: the numbers are printed, never asserted (docs/performance.md holds them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_web_quick_runs_the_fastapi_configurations() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web.py"), "--quick", "--framework", "fastapi"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| FastAPI |")]
    # The baseline, then install(app) + Depends(current_user) through a bearer token and a cookie
    # from one JSON login: ready() saw each answer {"user": "bench"} before any load ran.
    assert [row.split(" | ")[1] for row in rows] == [
        "bare route",
        "install + current_user, bearer",
        "install + current_user, cookie",
    ]
    assert "FastAPI, install + current_user, cookie: costs" in done.stdout


@pytest.mark.slow
def test_bench_web_api_keys_quick_runs_every_configuration() -> None:
    """bench/web_api_keys.py: each server answered its API key (and 401 without) before the load."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web_api_keys.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == (5 if os.environ.get("FUNDAMENTS_TEST_REDIS_URL") else 4)
    assert rows[0].startswith("| bare route |")
    assert "database backend (SQLite): costs" in done.stdout
