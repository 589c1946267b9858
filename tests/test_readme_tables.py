"""The README's result tables are what bench/readme_tables.py makes of the committed results files."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_bench_module

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    return load_bench_module("readme_tables")


def test_every_block_of_the_readme_matches_its_results_file():
    tables = _tables()
    text = (ROOT / "README.md").read_text()
    for name in tables.BLOCKS:
        assert f"<!-- generated:{name} -->" in text, f"the README lost its {name} block"
    assert tables.differing_blocks(text) == [], "run .venv/bin/python bench/readme_tables.py"


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
