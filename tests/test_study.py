"""``python -m rrr.study --quick``: every method and path of the grid, resume, rerun, failures."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rrr import study, study_report


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("study")
    results, runs = tmp / "study.csv", tmp / "runs"
    assert study.main(["--quick", "--csv", str(results), "--runs", str(runs), "--no-progress"]) == 0
    return results, runs


def test_the_quick_grid_has_every_row_and_column(quick):
    results, runs = quick
    rows = _rows(results)
    assert list(rows[0]) == study.COLUMNS
    expected = {
        (m, str(n), "0") for m, n, _ in study.grid(list(study.METHODS), study.QUICK_LABELS, [0])
    }
    assert {(r["method"], r["pixel_labels"], r["seed"]) for r in rows} == expected
    assert len(rows) == 3 * 3 + 3 * 2  # the weak methods also run with 0 pixel labels
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    for r in rows:
        for key in ("val_miou", "test_miou", "shifted_miou", "test_map"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert (r["true_gated_miou"] != "") == (r["method"] not in ("unet", "mt-unet"))
        assert float(r["images_per_second"]) > 0 and r["commit"]
    # the heatmap and Explainer rows of a seed share one pre-trained classifier
    assert sorted(p.name for p in runs.glob("pretrain-*")) == [
        "pretrain-classifier-seed0",
        "pretrain-mt-unet-seed0",
    ]
    lrp = next(r for r in rows if r["method"] == "lrp" and r["pixel_labels"] == "4")
    assert '"init_from"' in lrp["config"] and "pretrain-classifier-seed0" in lrp["config"]


def test_a_finished_study_runs_nothing_and_rerun_redoes_one_method(quick, capsys):
    results, runs = quick
    before = _rows(results)
    assert study.main(["--quick", "--csv", str(results), "--runs", str(runs), "--no-progress"]) == 0
    assert "0 runs to do" in capsys.readouterr().err
    assert _rows(results) == before
    args = ["--quick", "--csv", str(results), "--runs", str(runs), "--no-progress"]
    assert study.main([*args, "--rerun", "gradcam"]) == 0
    after = _rows(results)
    assert len(after) == len(before)
    assert [r["method"] for r in after[-3:]] == ["gradcam"] * 3
    # the pre-trained classifier is shared, so the rerun reproduces the rows' numbers
    old = {r["pixel_labels"]: r["test_miou"] for r in before if r["method"] == "gradcam"}
    assert {r["pixel_labels"]: r["test_miou"] for r in after[-3:]} == old


def test_a_failing_run_is_a_row_and_the_study_goes_on(tmp_path, monkeypatch):
    broken = study.Method(("--arch", "no_such_net"), None, weak=False)
    monkeypatch.setitem(study.METHODS, "broken", broken)
    results = tmp_path / "study.csv"
    args = ["--quick", "--csv", str(results), "--runs", str(tmp_path / "runs"), "--no-progress"]
    assert study.main([*args, "--methods", "broken", "unet", "--labels", "4"]) == 0
    rows = {r["method"]: r for r in _rows(results)}
    assert "no_such_net" in rows["broken"]["status"] and "\n" not in rows["broken"]["status"]
    assert rows["unet"]["status"] == "ok"
    # failed rows are kept until asked for again
    assert study.main([*args, "--methods", "broken", "unet", "--labels", "4"]) == 0
    assert len(_rows(results)) == 2


def test_a_missing_shared_pretraining_is_recreated(quick, tmp_path):
    results, runs = quick
    copy = tmp_path / "study.csv"
    copy.write_text(results.read_text())
    args = ["--quick", "--csv", str(copy), "--runs", str(tmp_path / "empty"), "--no-progress"]
    assert study.main([*args, "--rerun", "mt-unet"]) == 0
    assert (tmp_path / "empty" / "pretrain-mt-unet-seed0" / "checkpoint.pt").exists()
    assert all(r["status"] == "ok" for r in _rows(copy))


def test_report_tables_and_plot(quick, tmp_path):
    results, _ = quick
    rows = _rows(results)
    mean, std, n = study_report.stats([0.2, 0.4])
    assert (round(mean, 6), round(std, 6), n) == (0.3, round(0.02**0.5, 6), 2)
    block = study_report.report(rows, "study.csv")
    assert "| lrp |" in block and "| mt-unet |" in block and "Every run finished." in block
    doc = tmp_path / "results.md"
    doc.write_text(f"before\n{study_report.BEGIN}\nold\n{study_report.END}\nafter\n")
    plot = tmp_path / "study.png"
    args = ["--csv", str(results), "--write", str(doc), "--plot", str(plot)]
    assert study_report.main(args) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert plot.stat().st_size > 10_000
    assert study_report.best_heatmap_method(rows) in study_report.HEATMAP_METHODS
