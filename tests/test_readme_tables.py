"""The result tables of the README and docs/ are what bench/readme_tables.py makes of the committed results files."""

from __future__ import annotations

import json
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


def test_the_decisions_table_lists_the_settled_defaults_of_the_presets_in_use(tmp_path, monkeypatch):
    """A retired preset's verdicts, per-category verdicts, undecided ones and the recipes tried stay in
    docs/decisions.md; each settled default of a preset in use is one README row."""
    tables = _tables()
    base = {"seeds": {"a": 3}, "val_delta": 0.05, "val_low": 0.01, "val_high": 0.09, "test_delta": None}
    made = [
        ("short", "training", "all", "adopt"),
        ("short", "training", "a", "keep"),
        ("short", "training at half-steps", "all", "keep"),
        ("short", "recipe: half-steps", "all", "keep"),
        ("short", "pre_jitter=0", "all", "undecided: 2 paired seeds (need 3 on every category)"),
        ("short-v1", "image_score=auto", "all", "adopt"),
    ]
    decisions = [{**base, "preset": p, "decision": n, "scope": s, "verdict": v} for p, n, s, v in made]
    (tmp_path / "decisions.json").write_text(json.dumps({"decisions": decisions, "runs": []}))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    assert tables.decisions_table()[2:] == ["| short | training | 3 | +0.050 [+0.010, +0.090] | - | adopt |"]
