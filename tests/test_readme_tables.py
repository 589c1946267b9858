"""The result tables of the README and docs/ are what bench/readme_tables.py makes of the committed results files."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import load_bench_module

ROOT = Path(__file__).resolve().parents[1]
README_LINES = 300  # a README for users; the long tables and the research log live in docs/


def _tables():
    return load_bench_module("readme_tables")


def test_every_block_sits_in_one_document_and_matches_its_results_file():
    tables = _tables()
    texts = {path: path.read_text() for path in tables.DOCUMENTS}
    for name in tables.BLOCKS:
        holders = [path.name for path, text in texts.items() if f"<!-- generated:{name} -->" in text]
        assert len(holders) == 1, f"block {name} is in {holders or 'no document'}"
    for path, text in texts.items():
        assert tables.differing_blocks(text) == [], f"{path}: run .venv/bin/python bench/readme_tables.py"


def test_a_number_edited_by_hand_is_caught():
    tables = _tables()
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- generated:results -->")
    end = text.index("<!-- /generated:results -->")
    block = text[start:end]
    digit = next(i for i, ch in enumerate(block) if ch.isdigit() and i > block.index("|"))
    edited = block[:digit] + str((int(block[digit]) + 1) % 10) + block[digit + 1 :]
    assert tables.differing_blocks(text[:start] + edited + text[end:]) == ["results"]
    # And rendering puts the file's number back.
    assert tables.render(text[:start] + edited + text[end:]) == text


def test_the_readme_is_short_and_links_only_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_LINES
    for target in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
