"""``python -m rrr.study``: heatmap segmenters against U-Nets, from 0 to all pixel labels.

The study behind docs/results.md: every method of :data:`METHODS` trained with
each number of pixel-labelled images of :data:`PIXEL_LABELS` (0 only for the
methods that learn from image labels alone) and each seed, all under the
demo's budget (``rrr.demo.DEMO``: the same fine-tuning steps and batch size for
every method, the same classification pre-training for every method that has
one). Each finished run appends one row to ``results/study.csv`` at once:

    python -m rrr.study                       # the whole grid (resumes; run it in parts)
    python -m rrr.study --methods lrp unet    # some methods only
    python -m rrr.study --rerun explainer     # redo one method's rows after a change
    python -m rrr.study --quick --csv /tmp/quick.csv --runs /tmp/quick   # a tiny grid

Pre-training sees no pixel labels, so it is shared: one classifier per seed for
the heatmap and Explainer methods (each continues it with ``--init-from``), one
multi-task U-Net per seed. Shared checkpoints live in ``--runs`` (not committed)
and are recreated when missing. A run that fails is a row with its one-line
error, never the end of the study; rows already in the file are skipped, so a
stopped study goes on where it stopped (an interrupted run starts again).
``rrr.study_report`` turns the file into tables and the plot of docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIFTED = ["--objects", "3,5", "--scene-seed", "7"]
"""Differently composed test scenes: 3-5 items per scene and a scene seed no training used."""

COLUMNS = [
    "method", "backend", "loss", "arch", "pixel_labels", "seed", "commit", "status",
    "val_miou", "test_miou", "shifted_miou", "true_gated_miou", "test_map", "per_class_iou",
    "train_seconds", "pretrain_seconds", "images_per_second", "config",
]  # fmt: skip


@dataclass(frozen=True)
class Method:
    """One row family of the grid: its ``rrr.finetune`` options and what it shares.

    ``pretrain`` names the shared pre-training it continues (``None``: it trains
    from scratch for the fine-tuning steps only); ``weak`` methods also run with
    0 pixel labels (image labels alone).
    """

    options: tuple[str, ...]
    pretrain: str | None
    weak: bool


METHODS: dict[str, Method] = {
    # the recipe (the CLI's defaults: LRP-epsilon 0.1, classification weight 10)
    "lrp": Method(("--method", "lrp"), "classifier", weak=True),
    "gradcam": Method(("--method", "gradcam"), "classifier", weak=True),
    "input_x_gradient": Method(("--method", "input_x_gradient"), "classifier", weak=True),
    # the Explainer with the pixel term; it trains a fresh network, so it takes the
    # pre-training learning rate (docs/finetuning.md's Explainer runs)
    "explainer": Method(
        (
            "--model",
            "explainer",
            "--explainer",
            "small",
            "--seg-weight",
            "1",
            "--loss",
            "ce",
            "--lr",
            "1e-3",
        ),
        "classifier",
        weak=False,
    ),  # fmt: skip
    # the U-Net trains from scratch, so it takes the pre-training learning rate too; its
    # batches are the others' (half pixel-labelled), of which only the labelled half counts
    "unet": Method(("--model", "unet", "--lr", "1e-3"), None, weak=False),
    "mt-unet": Method(("--model", "mt-unet"), "mt-unet", weak=False),
}
PIXEL_LABELS: tuple[int | str, ...] = (0, 10, 50, 200, "all")
SEEDS = (0, 1, 2)

# the tiny grid of --quick (the tests run it): every method and code path, seconds per run
QUICK_BUDGET = [
    "--arch", "resnet18", "--image-size", "32", "--train-images", "24", "--val-images", "8",
    "--pretrain-epochs", "1", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
]  # fmt: skip
QUICK_LABELS: tuple[int | str, ...] = (0, 4, "all")


def budget() -> list[str]:
    """The demo's options without its method and pixel-label count (the grid sets those)."""
    from .demo import DEMO

    options, skip = [], False
    for token in DEMO:
        if skip:
            skip = False
            continue
        if token in ("--method", "--pixel-labels"):
            skip = True
            continue
        options.append(token)
    return options


def grid(methods: Sequence[str], labels: Sequence[int | str], seeds: Sequence[int]) -> list[tuple]:
    """``(method, pixel_labels, seed)`` of every row, seed-major so that parts finish seeds."""
    return [
        (method, n, seed)
        for seed in seeds
        for n in labels
        for method in methods
        if n != 0 or METHODS[method].weak
    ]


def commit() -> str:
    """``git describe --always --dirty`` of the repository, or "unknown" outside one."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _finetune(argv: list[str]) -> str | None:
    """Run ``rrr.finetune``; ``None`` on success, else its one-line error."""
    from . import finetune

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = finetune.main(argv)
    lines = [line for line in err.getvalue().splitlines() if "error" in line] or [
        line for line in err.getvalue().splitlines() if line.strip()
    ]
    if code == 130:
        raise KeyboardInterrupt
    if code:
        return (lines[-1] if lines else f"rrr.finetune exited with {code}")[:300]
    return None


def _evaluate(checkpoint: Path, split: str, *extra: str) -> dict[str, Any]:
    import warnings

    from . import evaluate

    args = evaluate.evaluate_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--split", split, "--no-progress", *extra]
    )
    with warnings.catch_warnings():
        # mAP of a class no test scene holds (tiny grids): torchmetrics' own convention
        warnings.filterwarnings("ignore", message="No positive samples found in target")
        return evaluate.evaluate(args)


def images_per_second(checkpoint: Path, batch: int = 32, rounds: int = 3) -> float:
    """``predict`` throughput on ``batch`` test images: the median of ``rounds`` after a warm-up."""
    import torch

    from .data import build_dataset
    from .device import resolve_device
    from .loading import load_trained

    device = resolve_device("auto")
    model, state = load_trained(checkpoint, device)
    config = state["run_config"]
    dataset = build_dataset(config.data, "test", **config.data_options("test"))
    x = torch.stack([dataset[i]["image"] for i in range(min(batch, len(dataset)))]).to(device)
    model.predict(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return len(x) / sorted(times)[len(times) // 2]


class Study:
    """The grid's rows in ``csv_path`` and its run directories under ``runs``."""

    def __init__(self, csv_path: Path, runs: Path, base: list[str]) -> None:
        self.csv_path, self.runs, self.base = csv_path, runs, base
        self.commit = commit()
        self.failed: dict[Path, str] = {}  # shared pre-trainings that failed in this invocation

    # -- the file -------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, str]]:
        if not self.csv_path.exists():
            return []
        with self.csv_path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def finished(self) -> set[tuple[str, str, str]]:
        """``(method, pixel_labels, seed)`` of every row in the file, failed ones included."""
        return {(r["method"], r["pixel_labels"], r["seed"]) for r in self.rows()}

    def drop(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite the file (atomically) with only the rows ``keep`` accepts."""
        from .checkpoint import atomic_write_text

        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in self.rows() if keep(r))
        atomic_write_text(self.csv_path, out.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(row)
            handle.flush()

    # -- shared pre-training --------------------------------------------------------------------
    def pretrained(self, kind: str, seed: int) -> tuple[Path, float]:
        """The shared pre-trained checkpoint of ``kind`` and ``seed`` and its training seconds."""
        out = self.runs / f"pretrain-{kind}-seed{seed}"
        record = out / "pretrain.json"
        if record.exists() and (out / "checkpoint.pt").exists():
            return out / "checkpoint.pt", json.loads(record.read_text())["seconds"]
        if out in self.failed:
            raise RuntimeError(self.failed[out])
        shutil.rmtree(out, ignore_errors=True)
        options = ["--model", "mt-unet"] if kind == "mt-unet" else ["--method", "lrp"]
        start = time.time()
        error = _finetune([*self.base, *options, "--epochs", "0", "--pixel-labels", "0",
                           "--seed", str(seed), "--out", str(out), "--no-progress",
                           "--overlays", "0"])  # fmt: skip
        if error:
            self.failed[out] = f"shared pre-training {kind}, seed {seed}: {error}"
            raise RuntimeError(self.failed[out])
        seconds = round(time.time() - start, 1)
        record.write_text(json.dumps({"seconds": seconds}))
        return out / "checkpoint.pt", seconds

    # -- one row --------------------------------------------------------------------------------
    def run(self, method: str, labels: int | str, seed: int) -> dict[str, Any]:
        spec = METHODS[method]
        row: dict[str, Any] = {"method": method, "pixel_labels": labels, "seed": seed,
                               "commit": self.commit}  # fmt: skip
        out = self.runs / f"{method}-{labels}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        argv = [*self.base, *spec.options, "--pixel-labels", str(labels), "--seed", str(seed),
                "--out", str(out), "--no-progress", "--overlays", "0"]  # fmt: skip
        try:
            if spec.pretrain is not None:
                checkpoint, row["pretrain_seconds"] = self.pretrained(spec.pretrain, seed)
                argv += ["--init-from", str(checkpoint), "--pretrain-epochs", "0"]
            else:
                argv += ["--pretrain-epochs", "0"]
            start = time.time()
            error = _finetune(argv)
            row["train_seconds"] = round(time.time() - start, 1)
            if error:
                return {**row, "status": error}
            row.update(self.measure(out / "checkpoint.pt"))
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - any failure is a row, never the end
            first = (str(error).splitlines() or [""])[0]
            return {**row, "status": f"{type(error).__name__}: {first}"[:300]}
        return {**row, "status": "ok"}

    def measure(self, checkpoint: Path) -> dict[str, Any]:
        from .checkpoint import load_checkpoint

        config = load_checkpoint(checkpoint)["config"]
        test = _evaluate(checkpoint, "test")
        gated = config["model"] in ("heatmap", "explainer")
        measured = {
            "backend": config["method"] if gated else "",
            "loss": config["loss"] + ("+explainer" if config["model"] == "explainer" else ""),
            "arch": config["arch"],
            "val_miou": _evaluate(checkpoint, "val")["miou"],
            "test_miou": test["miou"],
            "shifted_miou": _evaluate(checkpoint, "test", *SHIFTED)["miou"],
            "true_gated_miou": (
                _evaluate(checkpoint, "test", "--gating", "true")["miou"] if gated else ""
            ),
            "test_map": test.get("map", ""),
            "per_class_iou": json.dumps(test["per_class_iou"]),
            "images_per_second": round(images_per_second(checkpoint), 2),
            "config": json.dumps(config, sort_keys=True),
        }
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in measured.items()}


def study_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rrr.study",
        description="Heatmap segmenters against U-Nets from 0 to all pixel labels, over seeds "
        "(resumable: finished rows of --csv are skipped).",
    )
    parser.add_argument("--csv", type=Path, metavar="PATH", default=Path("results/study.csv"),
                        help="the results file (one row per finished run)")  # fmt: skip
    parser.add_argument("--runs", type=Path, metavar="DIR", default=Path("runs/study"),
                        help="run directories and shared pre-trained checkpoints")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="the methods to run")  # fmt: skip
    parser.add_argument("--labels", nargs="+", default=None, metavar="N",
                        help="pixel-labelled image counts, numbers or all (default 0 10 50 200 all)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="seeds (default 0 1 2; 0 with --quick)")  # fmt: skip
    parser.add_argument("--rerun", nargs="+", choices=list(METHODS), default=[],
                        help="drop these methods' rows first and run them again")  # fmt: skip
    parser.add_argument("--retry-failed", action="store_true",
                        help="run the rows whose status is an error again")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a tiny grid (seconds per run) that exercises every path")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")  # fmt: skip
    return parser


def _labels(values: Sequence[str]) -> list[int | str]:
    return [v if v == "all" else int(v) for v in values]


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = study_parser().parse_args(argv)
    base = QUICK_BUDGET if args.quick else budget()
    labels = (
        _labels(args.labels) if args.labels else list(QUICK_LABELS if args.quick else PIXEL_LABELS)
    )
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(SEEDS))
    study = Study(args.csv, args.runs, base)
    if args.rerun:
        study.drop(lambda r: r["method"] not in args.rerun)
    if args.retry_failed:
        study.drop(lambda r: r["status"] == "ok")
    done = study.finished()
    todo = [key for key in grid(args.methods, labels, seeds)
            if (key[0], str(key[1]), str(key[2])) not in done]  # fmt: skip
    print(f"rrr.study: {len(todo)} runs to do, results in {args.csv}", file=sys.stderr)
    bar = tqdm(todo, disable=not args.progress, desc="study")
    try:
        for method, n, seed in bar:
            bar.set_postfix_str(f"{method}, {n} pixel labels, seed {seed}")
            row = study.run(method, n, seed)
            study.append(row)
            if row["status"] != "ok":
                print(f"rrr.study: {method} {n} seed {seed}: {row['status']}", file=sys.stderr)
    except KeyboardInterrupt:
        print("rrr.study: interrupted; finished rows are kept, run it again to go on",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
