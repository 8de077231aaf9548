"""The support matrix script (benchmarks/support_matrix.py) on tiny models, and its page.

The script's own logic: cell statuses (correct, wrong, refused, crash,
timeout), resuming skips finished cells, a process that died inside a cell
leaves a ``crash`` there, and docs/support.md is what the renderer makes of
docs/support.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import support_matrix as sm  # noqa: E402


def _tiny_vit(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    )  # fmt: skip
    return sm.replace_head(model, 5).to(dtype).eval()


def _small_cnn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).to(dtype)


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


def _crashing(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(_small_cnn(dtype), _Boom())


def _nan(dtype: torch.dtype) -> nn.Module:
    model = _small_cnn(dtype)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


BUILDERS = {"tiny_vit": _tiny_vit, "small_cnn": _small_cnn, "crashing": _crashing, "nan": _nan}
SIZES = {name: 32 for name in BUILDERS}


def _run(tmp_path, models, backends, **options):
    return sm.run(
        "a",
        models,
        backends,
        json_path=tmp_path / "support.json",
        md_path=tmp_path / "support.md",
        builders=BUILDERS,
        sizes=SIZES,
        progress=False,
        **options,
    )


def test_resnet18_cells_are_correct_with_their_numbers(tmp_path):
    data = sm.run(
        "a",
        ["resnet18"],
        ["lrp-epsilon", "saliency"],
        json_path=tmp_path / "support.json",
        md_path=tmp_path / "support.md",
        progress=False,
    )
    lrp = data["cells"]["a"]["resnet18"]["lrp-epsilon"]
    assert lrp["status"] == "correct", lrp
    assert lrp["fd"] <= sm.FD_TOLERANCE
    assert lrp["conservation"] <= sm.CONSERVATION_TOLERANCE
    assert lrp["zennit"] <= sm.ZENNIT_TOLERANCE
    saliency = data["cells"]["a"]["resnet18"]["saliency"]
    assert saliency["status"] == "correct" and "conservation" not in saliency
    # torchvision's count (1000 classes)
    assert data["models"]["a"]["resnet18"] == {"parameters": 11689512, "size": 32}
    page = (tmp_path / "support.md").read_text()
    assert "| `resnet18` | 32 px | correct (fd" in page
    assert json.loads((tmp_path / "support.json").read_text()) == data


def test_statuses_refused_crash_and_wrong(tmp_path):
    data = _run(tmp_path, ["tiny_vit", "crashing", "nan"], ["lrp-epsilon", "saliency"])
    cells = data["cells"]["a"]
    refused = cells["tiny_vit"]["lrp-epsilon"]
    assert refused["status"] == "refused"
    assert "LayerNorm" in refused["message"] and "backend 'lrp'" in refused["message"]
    # LRP refuses the unknown layer before it runs; the gradient backend runs into it
    assert cells["crashing"]["lrp-epsilon"]["status"] == "refused"
    assert "_Boom" in cells["crashing"]["lrp-epsilon"]["message"]
    crash = cells["crashing"]["saliency"]
    assert crash["status"] == "crash"
    assert crash["message"].startswith("RuntimeError: boom inside the model (at ")
    for backend in ("lrp-epsilon", "saliency"):
        assert cells["nan"][backend]["status"] == "wrong"
        assert cells["nan"][backend]["message"].startswith("FloatingPointError")
    assert cells["tiny_vit"]["saliency"]["status"] == "correct"
    page = (tmp_path / "support.md").read_text()
    assert "**crash**" in page and "refused" in page and "boom inside the model" in page
    assert sm.totals(data["plan"]["a"], cells) == {
        "lrp-epsilon": {"refused": 2, "wrong": 1},
        "saliency": {"correct": 1, "crash": 1, "wrong": 1},
    }


def test_a_failed_check_is_wrong_with_its_number(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "FD_TOLERANCE", 0.0)
    cell = _run(tmp_path, ["small_cnn"], ["saliency"])["cells"]["a"]["small_cnn"]["saliency"]
    assert cell["status"] == "wrong"
    assert cell["message"].startswith("finite differences") and cell["fd"] > 0


def test_timeout_is_its_own_status():
    with pytest.raises(sm.CellTimeout) as caught, sm.time_limit(0.05):
        time.sleep(2)
    assert sm.classify_error(caught.value)["status"] == "timeout"


def test_resume_skips_finished_cells_and_marks_a_dead_cell(tmp_path, monkeypatch):
    _run(tmp_path, ["small_cnn"], ["saliency"])
    calls = []
    original = sm.PARTS["a"]["check"]

    def counting(*args):
        calls.append(args[:3])
        return original(*args)

    monkeypatch.setitem(sm.PARTS["a"], "check", counting)
    data = _run(tmp_path, ["small_cnn"], ["saliency", "input_x_gradient"])
    assert [c[2] for c in calls] == ["input_x_gradient"]
    assert data["plan"]["a"]["backends"] == ["saliency", "input_x_gradient"]
    # a process killed inside a cell: the next start records a crash there and goes on
    cache = json.loads((tmp_path / "support.json").read_text())
    cache["meta"]["running_a"] = ["tiny_vit", "saliency"]
    (tmp_path / "support.json").write_text(json.dumps(cache))
    data = _run(tmp_path, ["small_cnn"], ["saliency"])
    assert data["cells"]["a"]["tiny_vit"]["saliency"]["status"] == "crash"
    assert "died" in data["cells"]["a"]["tiny_vit"]["saliency"]["message"]
    assert len(calls) == 1
    _run(tmp_path, ["small_cnn"], ["saliency"], rerun=True)
    assert len(calls) == 2


def test_pending_cells_are_shown_as_pending():
    data = {
        "plan": {"b": {"models": ["m1", "m2"], "backends": ["saliency"]}},
        "cells": {"b": {"m1": {"saliency": {"status": "runs", "seconds": 1.0}}}},
        "models": {"b": {"m1": {"size": 32, "parameters": 10}}},
        "meta": {},
    }
    page = sm.render(data)
    assert "| `m2` | ? | pending |" in page
    assert "| `saliency` | 1 | 1 |" in page  # runs, pending
    assert sm.render(json.loads(json.dumps(data))) == page


def test_the_committed_page_is_rendered_from_the_committed_cache():
    cache = ROOT / "docs" / "support.json"
    page = ROOT / "docs" / "support.md"
    assert page.read_text() == sm.render(json.loads(cache.read_text())), (
        "docs/support.md differs from docs/support.json: run "
        "python benchmarks/support_matrix.py --render-only"
    )


def test_a_stopped_run_leaves_the_cell_pending_and_writes_the_page(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(sm.PARTS["a"], "check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["small_cnn"], ["saliency"])
    cache = json.loads((tmp_path / "support.json").read_text())
    assert "running_a" not in cache["meta"] and cache["cells"]["a"] == {}
    assert "| `small_cnn` | ? | pending |" in (tmp_path / "support.md").read_text()
