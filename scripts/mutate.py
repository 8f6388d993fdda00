"""Apply the security mutations listed in scripts/mutations.toml, one at a time, and report survivors.

Each entry names a file, an exact ``find`` text (it must occur exactly once in that file), its
``replace`` text, and the ``tests`` (pytest node ids or files) that must catch it. For every
entry the script mutates a *copy* of the repository in a temporary directory (the real files are
never edited, so an interrupted run leaves nothing behind), runs those tests there with ``-x -q``
and the copy's ``src`` first on PYTHONPATH, then puts the file back. A mutation is *killed* when
the tests fail (or time out: a hang would block CI too), *survived* when they pass.

    python scripts/mutate.py                 # every mutation; exit 1 if any survived
    python scripts/mutate.py --list          # ids, files and what each one removes
    python scripts/mutate.py --only lock-threshold-compare --only csrf-methods
    python scripts/mutate.py --check         # only check that every find text is still unique

Before the mutations, the listed tests run once unmutated (``--no-baseline`` skips it): a test that
already fails would "kill" every mutation. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO / "scripts" / "mutations.toml"
DEFAULT_TIMEOUT = 600.0  # seconds per mutation; beyond it the mutation counts as killed (a hang)


@dataclass(frozen=True, slots=True)
class Mutation:
    id: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    args: tuple[str, ...] = ()
    note: str = ""


def load(path: Path) -> list[Mutation]:
    """The mutations of ``path``; SystemExit naming the entry when one is malformed."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    mutations = []
    seen: set[str] = set()
    for n, entry in enumerate(data.get("mutation", []), start=1):
        missing = [k for k in ("id", "file", "find", "replace", "tests") if k not in entry]
        if missing:
            raise SystemExit(f"{path}: mutation #{n} lacks {', '.join(missing)}")
        if entry["id"] in seen:
            raise SystemExit(f"{path}: the id {entry['id']!r} is used twice")
        seen.add(entry["id"])
        tests = entry["tests"]
        if isinstance(tests, str) or not tests:
            raise SystemExit(f"{path}: {entry['id']}: tests must be a non-empty list of node ids")
        mutations.append(
            Mutation(
                id=entry["id"],
                file=entry["file"],
                find=entry["find"],
                replace=entry["replace"],
                tests=tuple(tests),
                args=tuple(entry.get("args", ())),
                note=entry.get("note", ""),
            )
        )
    return mutations


def anchor_errors(mutations: list[Mutation], root: Path) -> list[str]:
    """What is wrong with each entry's anchor: a missing file, a find text absent or repeated."""
    errors = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            errors.append(f"{m.id}: no file {m.file}")
            continue
        count = path.read_text(encoding="utf-8").count(m.find)
        if count != 1:
            errors.append(f"{m.id}: the find text occurs {count} times in {m.file} (it must occur once)")
        if m.find == m.replace:
            errors.append(f"{m.id}: find and replace are the same text")
    return errors


def copy_repository(destination: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the repository (not .git, not var/)."""
    git = shutil.which("git")
    if git is None:
        raise SystemExit("git is not on PATH: the repository copy is made from `git ls-files`")
    listed = subprocess.run(  # noqa: S603 - a fixed git command, no input of the caller
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = Path(os.fsdecode(raw))
        source = REPO / relative
        if not source.is_file():  # deleted in the working tree but still in the index
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never be shadowed by a mutant's .pyc
    return env


def check_import_path(copy: Path, env: dict[str, str]) -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import fundaments; print(fundaments.__file__)"],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(
            f"the copy imports fundaments from {found}, not from {copy}: mutations would not apply"
        )


def run_tests(
    copy: Path, env: dict[str, str], tests: tuple[str, ...], args: tuple[str, ...], timeout: float
) -> str:
    """'passed', 'failed' or 'timeout' for ``tests`` in the copy."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args, *tests]
    try:
        result = subprocess.run(  # noqa: S603 - pytest on the listed node ids of our own list
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    if result.returncode == 0:
        return "passed"
    if result.returncode in (3, 4, 5):  # internal error, usage error (a missing file), nothing collected
        raise SystemExit(
            f"pytest could not run {' '.join(tests)} (exit {result.returncode}): fix the node ids in the "
            f"list\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list-file", type=Path, default=DEFAULT_LIST, help="the TOML list of mutations")
    parser.add_argument(
        "--only", action="append", default=[], metavar="ID", help="run only this id (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--check", action="store_true", help="check the anchors and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutation")
    options = parser.parse_args(argv)

    mutations = load(options.list_file)
    if options.only:
        unknown = sorted(set(options.only) - {m.id for m in mutations})
        if unknown:
            raise SystemExit(f"unknown mutation ids: {', '.join(unknown)}")
        mutations = [m for m in mutations if m.id in options.only]
    if options.list:
        for m in mutations:
            print(f"{m.id:40} {m.file:40} {m.note}")
        return 0
    errors = anchor_errors(mutations, REPO)
    if errors:
        print("stale anchors (re-anchor these entries in the list):", *errors, sep="\n  ", file=sys.stderr)
        return 2
    if options.check:
        print(f"{len(mutations)} mutations, every anchor unique")
        return 0

    with tempfile.TemporaryDirectory(prefix="fundaments-mutate-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repository(copy)
        env = environment(copy)
        check_import_path(copy, env)
        if not options.no_baseline:
            for args in sorted({m.args for m in mutations}):
                tests = tuple(sorted({t for m in mutations if m.args == args for t in m.tests}))
                if run_tests(copy, env, tests, args, options.timeout * 4) != "passed":
                    print(f"baseline: the unmutated tests fail: {' '.join(tests)}", file=sys.stderr)
                    return 2
            print(f"baseline: the tests of {len(mutations)} mutations pass unmutated", flush=True)
        survivors = []
        for m in mutations:
            path = copy / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(m.find, m.replace, 1), encoding="utf-8")
            started = time.monotonic()
            try:
                outcome = run_tests(copy, env, m.tests, m.args, options.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            seconds = time.monotonic() - started
            verdict = {"failed": "killed", "timeout": "killed (timeout)", "passed": "SURVIVED"}[outcome]
            if outcome == "passed":
                survivors.append(m)
            print(f"{verdict:17} {m.id:40} {seconds:6.1f}s", flush=True)

    killed = len(mutations) - len(survivors)
    rate = 100.0 * killed / len(mutations) if mutations else 100.0
    print(f"\n{killed} of {len(mutations)} mutations killed ({rate:.1f} %)")
    for m in survivors:
        print(f"  survived: {m.id} ({m.file}): {m.note}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
