"""docs/mfa.md's example runs as a newcomer would run it: a file, in an empty directory, with the
settings in the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TEST_MASTER_KEY, TEST_SALT

DOC = Path(__file__).resolve().parent.parent / "docs" / "mfa.md"
MARKER = "<!-- mfa-example"


def test_the_mfa_example_runs(tmp_path: Path) -> None:
    text = DOC.read_text()
    match = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert match
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
        "MASTER_ENCRYPTION_KEY": TEST_MASTER_KEY,
        "PERSISTENT_ENCRYPTION_SALT": TEST_SALT,
        "MAIL_URL": f"file://{tmp_path}/outbox",
        "ARGON2_MEMORY_COST": "1024",
        "ARGON2_TIME_COST": "1",
    }
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
