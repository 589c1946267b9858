import pyarrow.parquet as pq
import pytest

from cutpaste.evaluation.report import RunRecord, summarise, to_markdown, write_results


def _records():
    return [
        RunRecord("bottle", 0, "finished", image_auroc=0.98),
        RunRecord("bottle", 1, "finished", image_auroc=0.96),
        RunRecord("carpet", 0, "finished", image_auroc=0.90),
        RunRecord("carpet", 1, "failed", error="OOM", run_name="b-carpet-seed1"),
        RunRecord("my_part", 0, "finished", image_auroc=0.80),
    ]


def test_mean_std_groups_and_paper_numbers():
    rows = {r.category: r for r in summarise(_records())}
    assert rows["bottle"].image_auroc_mean == pytest.approx(0.97)
    assert rows["bottle"].image_auroc_std == pytest.approx(0.0141421, rel=1e-4)
    assert rows["bottle"].paper_image_auroc == pytest.approx(0.983)
    assert rows["carpet"].kind == "texture" and rows["carpet"].seeds == 1 and rows["carpet"].failed == 1
    assert rows["my_part"].kind == "object" and rows["my_part"].paper_image_auroc is None
    assert rows["mean (textures)"].image_auroc_mean == pytest.approx(0.90)
    assert rows["mean (objects)"].image_auroc_mean == pytest.approx((0.97 + 0.80) / 2)
    assert rows["mean"].image_auroc_mean == pytest.approx((0.97 + 0.90 + 0.80) / 3)
    # No paper average when one category has no paper number.
    assert rows["mean (objects)"].paper_image_auroc is None
    assert rows["mean (textures)"].paper_image_auroc == pytest.approx(0.931)


def test_textures_come_first_then_objects_then_averages():
    order = [r.category for r in summarise(_records())]
    assert order == ["carpet", "bottle", "my_part", "mean (textures)", "mean (objects)", "mean"]


def test_files(tmp_path):
    paths = write_results(_records(), tmp_path)
    markdown = paths["markdown"].read_text()
    assert "| bottle | object | 2 | 97.0 ± 1.4 | 98.3 |" in markdown
    assert "1 (1 failed)" in markdown and "b-carpet-seed1: OOM" in markdown
    assert pq.read_table(paths["parquet"]).num_rows == 6
    assert pq.read_table(paths["runs"]).num_rows == 5
    assert paths["csv"].read_text().splitlines()[0].startswith('"category"')
    assert "pixel AUROC" not in to_markdown(summarise(_records()))
