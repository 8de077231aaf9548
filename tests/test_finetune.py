"""The fine-tuning CLI end to end, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from PIL import Image

from rrr import evaluate, finetune, predict
from rrr.checkpoint import CheckpointError, load_checkpoint

TINY = [*TINY_RUN, "--overlays", "2"]
ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, *extra: str) -> int:
    return finetune.main([*TINY, "--out", str(out), *extra])


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "lrp"],
        ["--method", "lrp", "--composite", "epsilon_plus_flat", "--loss", "energy"],
        ["--method", "gradcam", "--loss", "dice"],
        ["--method", "saliency", "--loss", "rrr"],
        ["--model", "unet"],
        ["--model", "mt-unet"],
    ],
    ids=["lrp", "lrp-plus-flat-energy", "gradcam-dice", "saliency-rrr", "unet", "mt-unet"],
)
def test_tiny_runs_write_every_output(tmp_path, options):
    out = tmp_path / "run"
    assert run(out, "--arch", "resnet18", *options) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert set(metrics["per_class_iou"]) >= {"background"}
    assert (out / "log.csv").read_text().count("\n") == 3  # header + one line per epoch
    assert any((out / "tensorboard").iterdir())
    assert list((out / "overlays").glob("epoch_*.png"))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0


def test_resnet50_runs(tmp_path):
    extra = ["--pretrain-epochs", "0", "--steps-per-epoch", "1", "--val-images", "4"]
    assert run(tmp_path / "r50", "--arch", "resnet50", *extra) == 0


def test_evaluate_and_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "--arch", "resnet18", "--method", "saliency") == 0
    report = tmp_path / "eval.json"
    code = evaluate.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--split", "test", "--objects", "2,3",
         "--val-images", "6", "--json", str(report), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(report.read_text())
    assert {"miou", "per_class_iou", "pixel_accuracy", "map", "f1"} <= set(result)
    assert result["images"] == 6
    image = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(
        image
    )
    assert (
        predict.main(
            ["--checkpoint", str(out / "checkpoint.pt"), str(image), "--out", str(tmp_path / "p")]
        )
        == 0
    )
    labels = np.asarray(Image.open(tmp_path / "p" / "scene_labels.png"))
    assert labels.shape == (32, 32) and labels.max() <= 10
    assert (tmp_path / "p" / "scene_overlay.png").exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# SIGKILL and Ctrl-C with --resume: tests/test_faults.py


@pytest.mark.parametrize(
    "method",
    [
        "lrp",
        "gradcam",
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "explainer",
    ],
)
def test_every_backends_checkpoint_evaluates_predicts_and_resumes(tmp_path, method, capsys):
    """Grad-CAM checkpoints once saved captum's view of a layer and could not be loaded back."""
    out = tmp_path / method
    extra = ["--explainer", "small"] if method == "explainer" else []
    if method in ("integrated_gradients", "smoothgrad"):  # many passes per map: smaller scenes
        extra = ["--image-size", "16", "--val-images", "2"]
    assert run(out, "--method", method, "--pretrain-epochs", "0", *extra) == 0
    checkpoint = str(out / "checkpoint.pt")
    assert evaluate.main(["--checkpoint", checkpoint, "--no-progress"]) == 0
    image = tmp_path / "picture.png"
    Image.fromarray(np.full((40, 30, 3), 80, np.uint8)).save(image)
    assert predict.main(["--checkpoint", checkpoint, str(image), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "picture_labels.png").is_file()
    assert (
        run(out, "--method", method, "--pretrain-epochs", "0", "--epochs", "2", "--resume", *extra)
        == 0
    )
    assert load_checkpoint(out / "checkpoint.pt")["global_step"] == 4


def test_two_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes = one process with the same global batch.

    Tolerance: 1e-5 absolute on every weight after 4 SGD steps (float32
    reductions in another order; the gradients agree to ~1e-6 relative).
    The heatmap is input x gradient (LRP-0 of a ReLU network): the exact
    parameter gradients of LRP-epsilon maps are so sensitive to the weights
    (denominators z + eps with eps = 1e-6) that float32 rounding differences
    of 1e-7 grow to 1e-2 in the weights within four steps, which would test
    float32 conditioning rather than the synchronisation. Only the heatmap
    stage runs: there BatchNorm statistics are frozen, whereas in
    classification pre-training each process normalises with its own half
    batch (SyncBatchNorm is CUDA-only), which no single-process run reproduces.
    """
    args = [
        *TINY, "--arch", "resnet18", "--method", "input_x_gradient", "--optimizer", "sgd", "--lr", "0.01",
        "--pretrain-epochs", "0", "--steps-per-epoch", "4",
        "--deterministic", "--overlays", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "-m", "rrr.finetune", *args, "--out", str(tmp_path / "two")],
        check=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "rrr.finetune", *args, "--out", str(tmp_path / "one")],
        check=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    two, one = (
        _weights(tmp_path / "two" / "checkpoint.pt"),
        _weights(tmp_path / "one" / "checkpoint.pt"),
    )
    worst = max((two[k].float() - one[k].float()).abs().max().item() for k in one)
    assert worst <= 1e-5, worst


# -- bad input: one line naming the file or option, exit code 2, nothing lost --------------


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return err[-1]


def test_missing_dataset(tmp_path, capsys):
    code = finetune.main(
        [
            *TINY,
            "--data",
            "voc",
            "--data-root",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "nowhere" in _error_line(capsys)


def _folder_dataset(root: Path, mask_size=(32, 32), mask_value=1, corrupt=False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nshirt\nshoe\n")
    for i in range(6):
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros(mask_size[::-1], np.uint8)
        mask[4:10, 4:10] = mask_value if i == 3 else 1
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i}.png")
    if corrupt:
        (root / "images" / "im3.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.mark.parametrize(
    "kind, expected",
    [("size", "im3"), ("class", "im3"), ("corrupt", "im3")],
)
def test_bad_folder_data(tmp_path, capsys, kind, expected):
    root = _folder_dataset(
        tmp_path / "data",
        mask_size=(30, 32) if kind == "size" else (32, 32),
        mask_value=7 if kind == "class" else 1,
        corrupt=kind == "corrupt",
    )
    if kind == "size":
        mask = np.zeros((30, 30), np.uint8)
        Image.fromarray(mask, mode="L").save(root / "masks" / "im3.png")
    code = finetune.main(
        [
            *TINY,
            "--data",
            "folder",
            "--data-root",
            str(root),
            "--train-images",
            "6",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert expected in _error_line(capsys)


def test_truncated_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "--arch", "resnet18", "--method", "saliency", "--pretrain-epochs", "0") == 0
    data = (out / "checkpoint.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)
    assert evaluate.main(["--checkpoint", str(bad), "--no-progress"]) == 2
    assert "bad.pt" in _error_line(capsys)


def test_architecture_backend_mismatch(tmp_path, capsys):
    assert run(tmp_path / "o", "--arch", "vit_b_16", "--method", "lrp") == 2
    line = _error_line(capsys)
    assert "lrp" in line and "vit_b_16" in line
    assert run(tmp_path / "o", "--arch", "not_a_net") == 2
    assert "not_a_net" in _error_line(capsys)


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "--arch", "resnet18", "--method", "saliency", "--pretrain-epochs", "0") == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert run(out, "--arch", "resnet18", "--method", "saliency") == 2
    assert "--resume" in _error_line(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert run(tmp_path / "fresh", "--resume") == 2
    assert "no checkpoint" in _error_line(capsys)


def test_weights_from_a_local_state_dict_with_another_head(tmp_path):
    """--weights PATH: a state dict of the same architecture with any head size loads."""
    import torchvision

    from rrr.classifiers import build_classifier

    source = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    model = build_classifier("resnet18", 10, str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 10
    bad = tmp_path / "bad.pt"
    torch.save(torchvision.models.resnet34().state_dict(), bad)
    with pytest.raises(ValueError, match="bad.pt"):
        build_classifier("resnet18", 10, str(bad))
