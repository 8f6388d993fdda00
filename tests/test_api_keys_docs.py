"""docs/api-keys.md's example runs, in a fresh process, and prints what the page shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- api-keys-example"


def example() -> tuple[str, str]:
    page = (REPO / "docs" / "api-keys.md").read_text()
    after = page[page.index(MARKER) :]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    output = re.search(r"```text\n(.*?)```", after, re.S)
    assert code and output
    return code.group(1), output.group(1)


def test_the_api_keys_page_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    code, expected = example()
    script = tmp_path / "api_keys_example.py"
    script.write_text(code)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MASTER_", "PERSISTENT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["FUNDAMENTS_ENV_FILE"] = str(tmp_path / "absent.env")
    env["ARGON2_MEMORY_COST"], env["ARGON2_TIME_COST"] = "1024", "1"  # a test's cheap hashing
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
