"""Bad input and mistakes at the command line: one line naming the problem, exit status 2,
and nothing in ``--out`` changed beyond what the case itself defines.

Every case is a row of :data:`CASES`; docs/reliability.md is generated from them
(``python docs/hooks/reference.py``), so the table users read is the table that runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from PIL import Image

from rrr import evaluate, finetune, predict

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_RUN, "--overlays", "1"]
MAINS = {"finetune": finetune.main, "evaluate": evaluate.main, "predict": predict.main}


@dataclass(frozen=True)
class Case:
    """One thing a user can get wrong, and what must happen.

    ``setup(tmp, run)`` prepares files under ``tmp`` (``run`` is a finished tiny
    run to copy or point at) and returns the arguments of ``python -m rrr.<command>``;
    ``expect`` is a regex the single stderr line must match; ``code`` the exit
    status; ``changes`` the paths under ``tmp`` the case may create or change.
    """

    id: str
    command: str
    trigger: str
    setup: Callable[[Path, Path], list[str]]
    expect: str
    code: int = 2
    changes: tuple[str, ...] = ()
    behaves: str = "error"  # "error", or "warning" for a run that goes on after one line
    fixed: bool = False  # wrong or poor before this version (see the reliability issue)
    extra: dict = field(default_factory=dict)


# -- set-ups --------------------------------------------------------------------------------------
def _folder(root: Path, *, mask_size=(32, 32), mask_value=1, corrupt_image=False,
            corrupt_mask=False, labels_line=None, images=6) -> Path:  # fmt: skip
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nshirt\nshoe\n")
    for i in range(images):
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(root / "images" / f"im{i}.png")
        size = mask_size if i == 3 else (32, 32)
        mask = np.zeros(size[::-1], np.uint8)
        mask[4:10, 4:10] = mask_value if i == 3 else 1
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i}.png")
    if corrupt_image:
        (root / "images" / "im3.png").write_bytes(b"\x89PNG not really")
    if corrupt_mask:
        (root / "masks" / "im3.png").write_bytes(b"not a png")
    if labels_line is not None:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "extra.png")
        (root / "labels.csv").write_text(labels_line + "\n")
    return root


def folder_run(**kwargs) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        root = _folder(tmp / "data", **kwargs)
        return [*TINY, "--data", "folder", "--data-root", str(root), "--train-images", "6",
                "--out", str(tmp / "out")]  # fmt: skip

    return setup


def tiny(*extra: str, out: str = "out") -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: [*TINY, *extra, "--out", str(tmp / out)]


def copied_run(*extra: str, prepare: Callable[[Path], None] | None = None):
    def setup(tmp: Path, run: Path) -> list[str]:
        shutil.copytree(run, tmp / "out")
        if prepare is not None:
            prepare(tmp / "out")
        return [*TINY, "--method", "saliency", *extra, "--out", str(tmp / "out")]

    return setup


def evil_file(path: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"model": Payload()}, path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def checkpoint_copy(change: Callable[[Path], Path]):
    def setup(tmp: Path, run: Path) -> list[str]:
        path = tmp / "given.pt"
        shutil.copy(run / "checkpoint.pt", path)
        return ["--checkpoint", str(change(path)), "--no-progress"]

    return setup


def _image(tmp: Path) -> Path:
    path = tmp / "picture.png"
    Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(path)
    return path


def _live_lock(out: Path) -> None:
    """A lock held by a live process (this test's own interpreter) on this directory."""
    from rrr.rundir import _start_time

    stat = out.stat()
    (out / ".lock").write_text(
        json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                    "start": _start_time(os.getpid()), "directory": [stat.st_dev, stat.st_ino]})
    )  # fmt: skip


def _dead_lock(out: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stat = out.stat()
    (out / ".lock").write_text(
        json.dumps({"host": os.uname().nodename, "pid": int(done.stdout),
                    "start": "1", "directory": [stat.st_dev, stat.st_ino]})
    )  # fmt: skip


def _copied_lock(out: Path) -> None:
    _live_lock(out)
    lock = json.loads((out / ".lock").read_text())
    lock["directory"] = [0, 1]  # recorded in the directory it was copied from
    (out / ".lock").write_text(json.dumps(lock))


def _stale_temporaries(out: Path) -> None:
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (out / ".log.csv.def456.tmp").write_text("epoch,")


CASES = [
    # -- data -------------------------------------------------------------------------------------
    Case("missing-data-root", "finetune", "`--data voc --data-root` a directory that does not exist",
         tiny("--data", "voc", "--data-root", "/nonexistent/voc"), r"nonexistent/voc"),
    Case("empty-folder", "finetune", "`--data folder` on an empty directory",
         lambda tmp, run: (tmp / "empty").mkdir() or [*TINY, "--data", "folder", "--data-root", str(tmp / "empty"), "--out", str(tmp / "out")],
         r"empty.*classes\.txt not found", changes=("empty",)),
    Case("mask-out-of-range", "finetune", "a mask holds class 7 of 2 classes",
         folder_run(mask_value=7), r"im3\.png: mask contains class index 7", changes=("data",)),
    Case("mask-wrong-size", "finetune", "a mask of another size than its image",
         folder_run(mask_size=(30, 32)), r"im3\.png: mask size 30x32 differs", changes=("data",)),
    Case("corrupt-image", "finetune", "an image file that does not decode",
         folder_run(corrupt_image=True), r"im3\.png: cannot decode image", changes=("data",)),
    Case("corrupt-mask", "finetune", "a mask file that does not decode",
         folder_run(corrupt_mask=True), r"im3\.png: cannot decode mask", changes=("data",)),
    Case("bad-labels-line", "finetune", "a labels.csv line with a class that does not exist",
         folder_run(labels_line="extra,1;9"), r"labels\.csv:1: class index 9 out of range", changes=("data",)),
    # -- numbers and names ------------------------------------------------------------------------
    Case("zero-batch", "finetune", "`--batch-size 0`", tiny("--batch-size", "0"), r"--batch-size: expected a positive number, got 0"),
    Case("negative-lr", "finetune", "`--lr -1`", tiny("--lr", "-1"), r"--lr: expected a positive number, got -1"),
    Case("not-a-number", "finetune", "`--epochs two`", tiny("--epochs", "two"), r"--epochs: expected an integer, got 'two'"),
    Case("bad-objects", "finetune", "`--objects 3,1`", tiny("--objects", "3,1"), r"expected 1 <= MIN <= MAX"),
    Case("unknown-arch", "finetune", "`--arch resnet17`", tiny("--arch", "resnet17"), r"--arch resnet17: not a torchvision classification architecture"),
    Case("explainer-loss-unknown-key", "finetune", "`--explainer-loss foo=1`", tiny("--model", "explainer", "--explainer", "small", "--explainer-loss", "foo=1"), r"--explainer-loss foo=1: 'foo=1' is not KEY=VALUE"),
    Case("arch-not-for-lrp", "finetune", "`--arch vit_b_16 --method lrp`", tiny("--arch", "vit_b_16"), r"--method lrp does not support --arch vit_b_16"),
    Case("misspelled-backend", "finetune", "`--method lrpp`", tiny("--method", "lrpp"), r"--method lrpp: unknown backend; available: .*lrp"),
    Case("misspelled-composite", "finetune", "`--composite epsilonn`", tiny("--composite", "epsilonn"), r"epsilonn"),
    Case("misspelled-data", "finetune", "`--data fashion-scene`", tiny("--data", "fashion-scene"), r"--data: invalid choice: 'fashion-scene'"),
    Case("bad-device", "finetune", "`--device gpu7`", tiny("--device", "gpu7"), r"--device gpu7: not a device name", fixed=True),
    Case("cuda-missing", "finetune", "`--device cuda` on a machine without CUDA",
         tiny("--device", "cuda"), r"--device cuda: CUDA is not available", extra={"skip_if_cuda": True}),
    Case("too-many-pixel-labels", "finetune", "`--pixel-labels 100` with 24 training images",
         tiny("--pixel-labels", "100"), r"--pixel-labels 100 is more than the 24 training images; use --pixel-labels all", fixed=True),
    Case("labelled-per-batch-clamped", "finetune", "`--labelled-per-batch 9` with `--batch-size 4`",
         tiny("--labelled-per-batch", "9", "--pretrain-epochs", "0"), r"warning: --labelled-per-batch 9 is larger than --batch-size 4",
         code=0, changes=("out",), behaves="warning", fixed=True),
    Case("too-few-pixel-labels-for-the-batch", "finetune", "every fine-tuning batch all pixel-labelled, but fewer such images than one batch",
         tiny("--model", "unet", "--pixel-labels", "2", "--labelled-per-batch", "4"),
         r"the fine-tuning stage has no batches: .*2 pixel-labelled images do not fill one batch of 4", fixed=True),
    Case("batch-larger-than-the-data", "finetune", "`--batch-size` larger than the training set",
         tiny("--batch-size", "32"), r"the classification stage has no batches: 24 training images do not fill one batch of 32", fixed=True),
    Case("lrp-no-freeze-bn", "finetune", "`--method lrp --no-freeze-bn` (LRP would never update BatchNorm)",
         tiny("--method", "lrp", "--no-freeze-bn"), r"--no-freeze-bn does not work with --method lrp", fixed=True),
    Case("lrp-checkpointing", "finetune", "`--method lrp --checkpoint-activations`",
         tiny("--method", "lrp", "--checkpoint-activations"), r"--checkpoint-activations does not support --method lrp"),
    # -- the run directory ------------------------------------------------------------------------
    Case("out-exists", "finetune", "an `--out` that holds a run, without `--resume`",
         copied_run(), r"already holds a run \(checkpoint\.pt\); pass --resume"),
    Case("resume-other-options", "finetune", "`--resume` with another `--arch`",
         copied_run("--resume", "--arch", "resnet34"), r"--resume: --arch resnet34 differs from the run"),
    Case("resume-nothing", "finetune", "`--resume` into an empty `--out`",
         tiny("--resume"), r"--resume: no checkpoint at .*checkpoint\.pt"),
    Case("out-is-a-file", "finetune", "`--out` names a file",
         lambda tmp, run: (tmp / "file").write_text("x") and [*TINY, "--out", str(tmp / "file")],
         r"--out .*file: exists and is not a directory", changes=("file",), fixed=True),
    Case("out-not-writable", "finetune", "`--out` where nothing can be written (read-only file system)",
         lambda tmp, run: [*TINY, "--out", "/proc/rrr-test-out"], r"--out /proc/rrr-test-out: cannot create it", fixed=True),
    Case("out-in-use", "finetune", "`--out` held by a running run (its lock names a live process)",
         copied_run("--resume", prepare=_live_lock), r"--out .* is in use by another run \(process \d+", fixed=True),
    Case("stale-lock", "finetune", "`--resume` where the lock's process is gone",
         copied_run("--resume", "--epochs", "2", prepare=_dead_lock), r"^done: ", code=0, changes=("out",), behaves="resumes", fixed=True),
    Case("copied-lock", "finetune", "`--resume` in a run directory copied with its lock",
         copied_run("--resume", "--epochs", "2", prepare=_copied_lock), r"^done: ", code=0, changes=("out",), behaves="resumes", fixed=True),
    Case("stale-temporaries", "finetune", "temporary files of a checkpoint write killed midway",
         copied_run("--resume", "--epochs", "2", prepare=_stale_temporaries), r"^done: ", code=0, changes=("out",), behaves="removed", fixed=True),
    # -- checkpoints ------------------------------------------------------------------------------
    Case("truncated-checkpoint", "evaluate", "`rrr.evaluate` on a truncated checkpoint",
         checkpoint_copy(_truncate), r"given\.pt: truncated or corrupt", changes=("given.pt",)),
    Case("code-carrying-pickle", "evaluate", "`rrr.evaluate` on a file that holds pickled code",
         lambda tmp, run: ["--checkpoint", str(evil_file(tmp / "evil.pt"))],
         r"evil\.pt: holds pickled code .*refused for safety", changes=("evil.pt",), fixed=True),
    Case("code-carrying-weights", "finetune", "`--weights` a file that holds pickled code",
         lambda tmp, run: [*TINY, "--weights", str(evil_file(tmp / "evil.pt")), "--out", str(tmp / "out")],
         r"--weights .*evil\.pt: holds pickled code", changes=("evil.pt",), fixed=True),
    Case("init-from-other-model", "finetune", "`--init-from` a heatmap run's checkpoint into `--model unet`",
         lambda tmp, run: [*TINY, "--model", "unet", "--init-from", str(run / "checkpoint.pt"), "--out", str(tmp / "out")],
         r"--init-from .*checkpoint\.pt: no weights of the same shape for \d+ of the \d+ backbone entries"),
    Case("init-from-missing", "finetune", "`--init-from` a file that does not exist",
         tiny("--init-from", "nope.pt"), r"nope\.pt: no such file"),
    Case("missing-checkpoint", "evaluate", "`--checkpoint` a file that does not exist",
         lambda tmp, run: ["--checkpoint", str(tmp / "nope.pt")], r"nope\.pt: no such file"),
    Case("other-version", "evaluate", "a checkpoint with an option this version does not know",
         lambda tmp, run: ["--checkpoint", str(_future(run, tmp))], r"unknown option\(s\) frobnicate: written by another version",
         changes=("future.pt",), fixed=True),
    Case("explain-a-unet", "evaluate", "`--explanation-metrics` of a U-Net checkpoint",
         lambda tmp, run: ["--checkpoint", str(_unet_run(tmp)), "--explanation-metrics", "--no-progress"],
         r"has no classifier to explain", changes=("unet",)),
    Case("predict-non-image", "predict", "`rrr.predict` on a text file",
         lambda tmp, run: (tmp / "notes.txt").write_text("hi") and ["--checkpoint", str(run / "checkpoint.pt"), str(tmp / "notes.txt"), "--out", str(tmp / "p")],
         r"notes\.txt: cannot be decoded", changes=("notes.txt",)),
    Case("predict-missing-image", "predict", "`rrr.predict` on a file that does not exist",
         lambda tmp, run: ["--checkpoint", str(run / "checkpoint.pt"), str(tmp / "gone.png"), "--out", str(tmp / "p")],
         r"gone\.png: no such file"),
    Case("predict-bad-device", "predict", "`rrr.predict --device gpu7`",
         lambda tmp, run: ["--checkpoint", str(run / "checkpoint.pt"), str(_image(tmp)), "--out", str(tmp / "p"), "--device", "gpu7"],
         r"--device gpu7: not a device name", changes=("picture.png",), fixed=True),
]  # fmt: skip


def _future(run: Path, tmp: Path) -> Path:
    from rrr.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "checkpoint.pt")
    state["config"] = {**state["config"], "frobnicate": True}
    save_checkpoint(tmp / "future.pt", state)
    return tmp / "future.pt"


def _unet_run(tmp: Path) -> Path:
    assert (
        finetune.main(
            [*TINY, "--model", "unet", "--pretrain-epochs", "0", "--out", str(tmp / "unet")]
        )
        == 0
    )
    return tmp / "unet" / "checkpoint.pt"


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert finetune.main([*TINY, "--method", "saliency", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path: Path, finished_run: Path, capsys):
    if case.extra.get("skip_if_cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_before = tree(finished_run)
    argv = case.setup(tmp_path, finished_run)
    before = tree(tmp_path)
    capsys.readouterr()
    try:
        code = MAINS[case.command](argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()
    assert code == case.code, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    if case.behaves == "error":  # warnings that go with it (e.g. a folder without splits/) aside
        lines = [line for line in lines if ": warning: " not in line]
        assert len(lines) == 1, f"expected one line, got:\n{captured.err}"
        assert re.search(case.expect, lines[0]), lines[0]
    elif case.behaves == "warning":
        assert len(lines) == 1 and re.search(case.expect, lines[0]), captured.err
    else:
        assert re.search(case.expect, captured.out, re.M), captured.out
    after = tree(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    unexpected = {k for k in changed if not k.startswith(case.changes)} if case.changes else changed
    assert not unexpected, f"files changed that the case does not define: {sorted(unexpected)}"
    if case.id != "out-in-use":  # there the lock is the other run's, and stays
        assert not (tmp_path / "out" / ".lock").exists(), "the lock outlived the run"
    if case.id == "stale-temporaries":
        assert not list((tmp_path / "out").glob(".*.tmp"))
    if case.code == 2 and case.command == "finetune" and "out" not in case.changes:
        assert not (tmp_path / "out").exists() or before == after
    assert tree(finished_run) == run_before


def test_every_case_has_a_distinct_id():
    assert len({c.id for c in CASES}) == len(CASES)


# -- faults during a run --------------------------------------------------------------------------
def test_out_becoming_unwritable_mid_run_is_one_line_and_releases_the_lock(
    tmp_path, capsys, monkeypatch
):
    import rrr.runlog

    calls = []

    def refuse(path, text):
        calls.append(path)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rrr.runlog, "atomic_write_text", refuse)
    out = tmp_path / "out"
    assert finetune.main([*TINY, "--method", "saliency", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(
        r"cannot write \(.*log\.csv\): Permission denied", lines[0]
    )
    assert calls and not (out / ".lock").exists()


def test_pixel_labels_all_selects_every_training_image(tmp_path):
    out = tmp_path / "out"
    assert (
        finetune.main([*TINY, "--method", "saliency", "--pixel-labels", "all", "--out", str(out)])
        == 0
    )
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["pixel_labels"] == "all"
    from rrr.config import RunConfig
    from rrr.data import build_dataset, pixel_label_split

    train = build_dataset(
        "fashion-scenes", "train", **RunConfig.from_dict(config).data_options("train")
    )
    subset, chosen = pixel_label_split(train, "all", 0)
    assert sorted(chosen) == list(range(24)) and not subset.unlabelled_indices


# the first run waits inside its first step until the test lets it go on, so the second
# run certainly starts while the first holds --out, however slow the machine is
HOLD_FIRST_STEP = r"""
import os, sys, time
import rrr.trainer
release, args = sys.argv[1], sys.argv[2:]
original_step = rrr.trainer.Trainer.step
def step(self, batch, phase):
    while not os.path.exists(release):
        time.sleep(0.05)
    return original_step(self, batch, phase)
rrr.trainer.Trainer.step = step
from rrr import finetune
sys.exit(finetune.main(args))
"""


def test_a_second_run_into_the_same_out_refuses_while_the_first_runs(tmp_path):
    """Two runs into one --out: the second refuses in one line; the log is the first run's."""
    options = [*TINY, "--method", "saliency", "--out", str(tmp_path / "out")]
    release = tmp_path / "release"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_FIRST_STEP, str(release), *options],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (tmp_path / "out" / ".lock").exists() and time.time() < deadline:
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "rrr.finetune", *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    release.touch()
    first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another run" in lines[0], second.stderr
    log = (tmp_path / "out" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and not (tmp_path / "out" / ".lock").exists()
