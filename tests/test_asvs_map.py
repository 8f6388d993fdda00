"""The ASVS map and the threat model name tests that exist, and the map covers its chapters.

docs/asvs.md and docs/threat-model.md cite their evidence as ``tests/<file>.py::<test>``. A test
renamed or deleted would leave a claim without proof, so this module fails, listing every dangling
reference. It also holds two small checks the map cites for requirements no other test covers.
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

from fundaments.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "asvs.md", ROOT / "docs" / "threat-model.md")
REFERENCE = re.compile(r"tests/([A-Za-z0-9_/]+\.py)::([A-Za-z_][A-Za-z0-9_]*)")
ROW = re.compile(
    r"^\|\s*(\d+\.\d+\.\d+)[^|]*\|\s*(\d)\s*\|[^|]*\|\s*\**([^|*]+?)\**\s*\|[^|]*\|([^|]*)\|\s*$"
)
CHAPTERS = ("6.", "7.", "3.3.", "3.5.", "8.", "11.", "13.3.", "16.")
STATUSES = ("met", "met (console)", "partly", "not met", "n/a")
BY_ABSENCE = {"6.4.2"}  # met because the feature does not exist: nothing to test


def collected_tests(path: Path) -> set[str]:
    """Names of the test functions pytest would collect from a file: module level or in a class."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                item.name
                for item in node.body
                if isinstance(item, functions) and item.name.startswith("test")
            )
    return names


def references() -> list[tuple[str, str, str]]:
    """(document, file, test) for every reference in the two documents."""
    found = []
    for doc in DOCS:
        for file, name in REFERENCE.findall(doc.read_text(encoding="utf-8")):
            found.append((doc.name, file, name))
    return found


def map_rows() -> list[tuple[str, int, str, str]]:
    """(id, level, status, evidence cell) for every requirement row of docs/asvs.md."""
    rows = []
    for line in (ROOT / "docs" / "asvs.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match[1], int(match[2]), match[3].strip(), match[4]))
    return rows


def test_every_referenced_test_exists() -> None:
    refs = references()
    assert len(refs) > 100, "the documents should cite their evidence as tests/<file>.py::<test>"
    cache: dict[str, set[str] | None] = {}
    missing = []
    for doc, file, name in refs:
        if file not in cache:
            path = ROOT / "tests" / file
            cache[file] = collected_tests(path) if path.is_file() else None
        names = cache[file]
        if names is None:
            missing.append(f"{doc}: tests/{file} does not exist (cited for {name})")
        elif name not in names:
            missing.append(f"{doc}: tests/{file}::{name} does not exist")
    assert not missing, "dangling test references:\n" + "\n".join(sorted(set(missing)))


def test_the_map_has_rows_for_every_chapter_with_valid_statuses() -> None:
    rows = map_rows()
    for chapter in CHAPTERS:
        assert any(rid.startswith(chapter) for rid, *_ in rows), f"no row for chapter {chapter.rstrip('.')}"
    problems = []
    seen: set[str] = set()
    for rid, level, status, evidence in rows:
        if not rid.startswith(CHAPTERS):
            problems.append(f"{rid}: not in a mapped chapter")
        if level not in (1, 2):
            problems.append(f"{rid}: level {level} is beyond the map's scope (L1-L2)")
        if status not in STATUSES:
            problems.append(f"{rid}: status {status!r} is not one of {STATUSES}")
        if status not in ("n/a", "not met") and rid not in BY_ABSENCE and not REFERENCE.search(evidence):
            problems.append(f"{rid}: status {status!r} names no test")
        if rid in seen:
            problems.append(f"{rid}: listed twice")
        seen.add(rid)
    assert not problems, "\n".join(problems)


def test_the_fuzzing_record_section_is_present() -> None:
    text = (ROOT / "docs" / "asvs.md").read_text(encoding="utf-8")
    assert "\n## Fuzzing record\n" in text


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.paste_handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "input":
            self.inputs.append(attributes)
        self.paste_handlers.extend(name for name in attributes if name in ("onpaste", "oncopy", "ondrop"))


def test_console_password_fields_are_masked_and_allow_paste() -> None:
    """ASVS 6.2.6 and 6.2.7 in the example console: masked fields, paste and managers allowed."""
    checked = 0
    for template in sorted((ROOT / "app" / "templates").glob("*.html")):
        parser = _Inputs()
        parser.feed(template.read_text(encoding="utf-8"))
        assert not parser.paste_handlers, f"{template.name} blocks paste or copy"
        for field in parser.inputs:
            if "password" not in (field.get("name") or "") or field.get("type") == "hidden":
                continue
            checked += 1
            assert field.get("type") == "password", f"{template.name}: {field.get('name')} is not masked"
            assert field.get("autocomplete") in ("current-password", "new-password"), (
                f"{template.name}: {field.get('name')} should let password managers fill it"
            )
    assert checked >= 4  # login, current + new + confirmation, admin's new-user form


def test_no_setting_expires_passwords() -> None:
    """ASVS 6.2.10: no periodic rotation; a password stays valid until the user changes it."""
    rotation = re.compile(r"(password|credential).*(age|expir|rotat|lifetime|days)")
    assert not [name for name in Settings.model_fields if rotation.search(name)]
