"""Run every atheris harness for a bounded time: ``python fuzz/run.py [--seconds 120] [--jobs N]``.

Not part of the test suite (pytest collects tests/ only). Needs ``pip install atheris``.
Each harness fuzzes from the committed seeds in fuzz/corpus/<name>/seed-*; the inputs it finds
interesting are added to that folder (git-ignored except the seeds), so a second run goes on where
the first stopped. A crash is written to fuzz/crashes/<name>-crash-<sha1>, reproducible with
``python fuzz/fuzz_<name>.py fuzz/crashes/<name>-crash-<sha1>``. Exit status: 0 when every harness
ran its time without a finding, 1 otherwise. The summary line of each harness gives the inputs
tried (libFuzzer's ``stat::number_of_executed_units``) and the time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = ("envelope", "stream")
MAX_LEN = {"envelope": 4096, "stream": 16384}


def run(name: str, seconds: int, log_dir: Path) -> tuple[bool, int, float]:
    corpus = HERE / "corpus" / name
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    log = log_dir / f"{name}.log"
    command = [
        sys.executable,
        str(HERE / f"fuzz_{name}.py"),
        str(corpus),
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN[name]}",
        "-timeout=10",  # seconds per input
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{name}-",
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        # A hang beyond the budget is a finding too: kill it after twice the time plus start-up.
        try:
            code = subprocess.run(  # noqa: S603 - our own harness, fixed arguments
                command, stdout=out, stderr=subprocess.STDOUT, timeout=2 * seconds + 120
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    match = re.search(r"stat::number_of_executed_units:\s+(\d+)", text)
    executed = int(match.group(1)) if match else 0
    return code == 0, executed, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120, help="fuzzing time per harness (default 120)")
    parser.add_argument("--only", choices=HARNESSES, action="append", help="run only this harness")
    parser.add_argument("--log-dir", type=Path, default=HERE / "logs", help="where the libFuzzer logs go")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    for name in args.only or HARNESSES:
        passed, executed, elapsed = run(name, args.seconds, args.log_dir)
        ok &= passed
        status = "ok" if passed else f"FINDING (see {args.log_dir / (name + '.log')} and fuzz/crashes/)"
        print(f"{name}: {executed} inputs in {elapsed:.0f} s: {status}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
