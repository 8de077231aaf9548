"""Faults during a run: SIGKILL at seeded random points (during a checkpoint write too) and
Ctrl-C; after ``--resume`` the weights are bitwise those of an uninterrupted run and
log.csv is identical.

The faults are injected from a small launcher (:data:`LAUNCHER`) that patches the
running process: after a given training step, or halfway through writing the
n-th checkpoint (after half of its bytes, before the rename), the process sends
itself SIGKILL or SIGINT. The resumed runs are plain ``python -m rrr.finetune``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrr.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "--image-size", "32", "--train-images", "40", "--val-images", "8", "--batch-size", "4",
    "--pixel-labels", "4", "--pretrain-epochs", "1", "--epochs", "1", "--steps-per-epoch", "0",
    "--method", "saliency", "--checkpoint-every", "3", "--deterministic", "--no-progress",
    "--overlays", "0",
]  # fmt: skip
STEPS = 28  # 10 pre-training batches, 18 mixed batches (one pass over the 36 unlabelled images)
SAVES = 11  # every 3 steps (9) and at the end of both epochs (2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

LAUNCHER = r"""
import os, signal, sys
import torch
import rrr.trainer
mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sig = signal.SIGINT if mode.startswith("sigint") else signal.SIGKILL
if mode.endswith("step"):
    original_step = rrr.trainer.Trainer.step
    def step(self, batch, phase):
        values = original_step(self, batch, phase)
        if self.global_step + 1 == n:
            os.kill(os.getpid(), sig)
        return values
    rrr.trainer.Trainer.step = step
else:  # "write": die halfway through the n-th checkpoint write
    original_save, count = torch.save, [0]
    def save(obj, handle, *rest, **kw):
        count[0] += 1
        original_save(obj, handle, *rest, **kw)
        if count[0] == n:
            handle.flush()
            handle.truncate(handle.tell() // 2)
            handle.flush()
            os.kill(os.getpid(), sig)
    torch.save = save
from rrr import finetune
sys.exit(finetune.main(args))
"""


def finetune(out: Path, *extra: str, fault: tuple[str, int] | None = None):
    if fault is None:
        command = [sys.executable, "-m", "rrr.finetune", *RUN, *extra, "--out", str(out)]
    else:
        mode, n = fault
        command = [sys.executable, "-c", LAUNCHER, mode, str(n), *RUN, *extra, "--out", str(out)]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    result = finetune(out)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    ours, theirs = (
        load_checkpoint(run / "checkpoint.pt"),
        load_checkpoint(reference / "checkpoint.pt"),
    )
    assert ours["global_step"] == theirs["global_step"] == STEPS
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    assert (run / "log.csv").read_text() == (reference / "log.csv").read_text()
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()


def _seeded_points() -> list[tuple[str, int]]:
    rng = random.Random(15)
    steps = sorted(rng.sample(range(1, STEPS), 3))
    writes = sorted(rng.sample(range(1, SAVES), 2))
    return [("kill-step", n) for n in steps] + [("kill-write", n) for n in writes]


POINTS = _seeded_points()


@pytest.mark.parametrize("fault", POINTS, ids=[f"{m}-{n}" for m, n in POINTS])
def test_sigkill_then_resume_gives_the_same_weights_and_log(tmp_path, reference, fault):
    out = tmp_path / "killed"
    killed = finetune(out, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if fault[0] == "kill-write":
        assert list(out.glob(".checkpoint.pt.*.tmp")), "the kill did not land inside a write"
    if (out / "checkpoint.pt").exists():
        load_checkpoint(out / "checkpoint.pt")  # never truncated: the rename had not happened
        resumed = finetune(out, "--resume")
    else:  # killed before the first checkpoint: nothing to resume, start again in the same --out
        resumed = finetune(out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


def test_ctrl_c_writes_a_checkpoint_says_how_to_resume_and_resumes_exactly(tmp_path, reference):
    out = tmp_path / "interrupted"
    stopped = finetune(out, fault=("sigint-step", 7))
    assert stopped.returncode == 130
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr
    assert "interrupted at step 7; checkpoint written to" in lines[0]
    assert lines[0].endswith("--resume") and "python -m rrr.finetune" in lines[0]
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (7, 0, 7)
    assert not (out / ".lock").exists()
    resumed = finetune(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


def test_the_faults_cover_at_least_five_points_and_a_checkpoint_write():
    assert len(POINTS) >= 5 and any(mode == "kill-write" for mode, _ in POINTS)
