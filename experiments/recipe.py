"""Recipe sweep for the heatmap stage (the "main job must beat its baseline" issue).

One pre-trained checkpoint per seed (the demo's classification stage, no pixel
labels involved) is shared by every heatmap variant of that seed; each variant
continues a copy of it with ``--resume`` and its own heatmap-stage options.
Baselines (U-Net, multi-task U-Net) train from scratch with the same command.
Every finished run appends one JSON line to ``results/recipe.jsonl`` at once
and is skipped when the sweep runs again, so a stopped sweep resumes.

    python experiments/recipe.py --seeds 0 --variants base cls5         # choose on validation
    python experiments/recipe.py --seeds 0 1 2 --variants final mt-unet  # the table

Columns: the head's validation mIoU / mAP at the end of pre-training, the
validation mIoU / mAP after the heatmap stage, test mIoU, mIoU on differently
composed scenes (3-5 items, scene seed 7), true-gated test mIoU.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "recipe.jsonl"
RUNS = ROOT / "runs" / "recipe"

# the demo's data and classification stage (rrr.demo.DEMO without the heatmap options)
PRETRAIN = [
    "--arch", "resnet18", "--image-size", "64", "--train-images", "2000", "--val-images", "200",
    "--pixel-labels", "50", "--pretrain-epochs", "4", "--batch-size", "16", "--pretrain-lr", "1e-3",
    "--steps-per-epoch", "125", "--no-progress", "--overlays", "2",
]  # fmt: skip
HEATMAP = ["--method", "lrp", "--composite", "epsilon", "--epsilon", "0.1", "--loss", "ce",
           "--lr", "1e-4", "--scalar-lr", "1e-3"]  # fmt: skip

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "cls5": ["--cls-weight", "5"],
    "cls10": ["--cls-weight", "10"],
    "cls5-lr3e-5": ["--cls-weight", "5", "--lr", "3e-5"],
    "cls5-steps250": ["--cls-weight", "5", "--steps-per-epoch", "250"],
    "cls5-dice": ["--cls-weight", "5", "--loss", "dice"],
    "cls5-smooth3": ["--cls-weight", "5", "--smoothing", "3"],
    "cls20": ["--cls-weight", "20"],
    "cls50": ["--cls-weight", "50"],
    "cls10-presence": ["--cls-weight", "10", "--presence", "pretrained"],
    "cls10-seg0": ["--cls-weight", "10", "--seg-weight", "0"],  # control: no heatmap loss
    "cls10-seg5": ["--cls-weight", "10", "--seg-weight", "5"],
    "cls10-dice": ["--cls-weight", "10", "--loss", "dice"],
    "cls10-smooth5": ["--cls-weight", "10", "--smoothing", "5"],
    "cls10-plus-flat": ["--cls-weight", "10", "--composite", "epsilon_plus_flat"],
    "cls10-energy": ["--cls-weight", "10", "--loss", "energy"],
    "presence": ["--presence", "pretrained"],
    "cls5-presence": ["--cls-weight", "5", "--presence", "pretrained"],
    "cls5-presence-lr3e-5": ["--cls-weight", "5", "--presence", "pretrained", "--lr", "3e-5"],
}
BASELINES = {"mt-unet": ["--model", "mt-unet"], "unet": ["--model", "unet"]}
# data variants change the classification stage too, so each has its own shared pre-training;
# a run named "DATA:VARIANT" (e.g. "img8k:cls10", "img8k:mt-unet") uses DATA's options
DATA: dict[str, list[str]] = {
    "": [],
    # four times the image-labelled scenes at the same number of steps (image labels are the
    # cheap resource): each scene is seen once in pre-training instead of four times
    "img8k": ["--train-images", "8000"],
}
SHIFTED = ["--objects", "3,5", "--scene-seed", "7"]


def python_m(module: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True)


def evaluate(checkpoint: Path, *extra: str) -> dict:
    report = checkpoint.parent / f"eval_{abs(hash(extra))}.json"
    python_m(
        "rrr.evaluate",
        "--checkpoint",
        str(checkpoint),
        "--no-progress",
        "--json",
        str(report),
        *extra,
    )
    return json.loads(report.read_text())


def last(log: Path, phase: str) -> dict:
    rows = [r for r in csv.DictReader(log.open()) if r["phase"] == phase]
    return rows[-1] if rows else {}


def split_name(name: str) -> tuple[list[str], str]:
    """``"img8k:cls10"`` -> (the data options of img8k, "cls10")."""
    data, _, variant = name.rpartition(":")
    return DATA[data], variant


def pretrained(seed: int, data: str = "") -> Path:
    """The shared classification-stage checkpoint of ``seed`` (recreated when missing)."""
    out = RUNS / f"pretrain{'-' + data if data else ''}-seed{seed}"
    if (
        not (out / "checkpoint.pt").exists()
        or last(out / "log.csv", "pretrain").get("epoch") != "4"
    ):
        shutil.rmtree(out, ignore_errors=True)
        python_m(
            "rrr.finetune",
            *PRETRAIN,
            *DATA[data],
            *HEATMAP,
            "--epochs",
            "0",
            "--seed",
            str(seed),
            "--out",
            str(out),
        )
    return out


def done() -> set[tuple[str, int]]:
    if not RESULTS.exists():
        return set()
    return {(r["variant"], r["seed"]) for r in map(json.loads, RESULTS.read_text().splitlines())}


def run(name: str, seed: int) -> dict:
    data_options, variant = split_name(name)
    out = RUNS / f"{name.replace(':', '-')}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    if variant in BASELINES:
        python_m("rrr.finetune", *PRETRAIN, *data_options, *BASELINES[variant], "--epochs", "1",
                 "--seed", str(seed), "--out", str(out))  # fmt: skip
        head = last(out / "log.csv", "pretrain")
    else:
        source = pretrained(seed, name.rpartition(":")[0])
        shutil.copytree(source, out)
        head = last(out / "log.csv", "pretrain")
        python_m("rrr.finetune", *PRETRAIN, *data_options, *HEATMAP, *VARIANTS[variant],
                 "--epochs", "1",
                 "--seed", str(seed), "--out", str(out), "--resume")  # fmt: skip
    after = last(out / "log.csv", "finetune")
    checkpoint = out / "checkpoint.pt"
    test = evaluate(checkpoint, "--split", "test")
    shifted = evaluate(checkpoint, "--split", "test", *SHIFTED)
    gated = (
        evaluate(checkpoint, "--split", "test", "--gating", "true")
        if variant not in BASELINES
        else {}
    )
    return {
        "variant": name, "seed": seed,
        "options": data_options + (BASELINES.get(variant) or VARIANTS[variant]),
        "head_val_miou": float(head["val_miou"]) if head else None,
        "head_val_map": float(head["val_map"]) if head else None,
        "val_miou": float(after["val_miou"]), "val_map": float(after["val_map"]),
        "test_miou": test["miou"], "test_map": test.get("map"),
        "shifted_miou": shifted["miou"], "true_gated_miou": gated.get("miou"),
        "seconds": round(time.time() - start, 1),
    }  # fmt: skip


def table(variants: list[str]) -> str:
    """Markdown: one row per (variant, seed), then mean ± std over the seeds of each variant."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    keys = ["head_val_miou", "val_miou", "head_val_map", "val_map", "test_miou", "shifted_miou",
            "true_gated_miou"]  # fmt: skip
    head = ("| variant | seed | head val mIoU | val mIoU | head val mAP | val mAP | test mIoU "
            "| 3-5 item scenes | test, true gating |")  # fmt: skip
    lines = [head, "|---" * 9 + "|"]

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    for variant in variants:
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["seed"])
        for r in mine:
            lines.append(
                f"| {variant} | {r['seed']} | " + " | ".join(cell(r[k]) for k in keys) + " |"
            )
        if len(mine) > 1:
            stats = []
            for k in keys:
                values = [r[k] for r in mine if r[k] is not None]
                if not values:
                    stats.append("–")
                    continue
                mean = sum(values) / len(values)
                std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                stats.append(f"{mean:.3f} ± {std:.3f}")
            lines.append(f"| **{variant}** | mean ± std | " + " | ".join(stats) + " |")
    return "\n".join(lines)


def reevaluate(variants: list[str], seeds: list[int]) -> None:
    """Recompute the validation, test and 3-5 item columns of finished runs in place."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    for row in rows:
        if row["variant"] not in variants or row["seed"] not in seeds:
            continue
        checkpoint = (
            RUNS / f"{row['variant'].replace(':', '-')}-seed{row['seed']}" / "checkpoint.pt"
        )
        if not checkpoint.exists():
            print(f"skipped {row['variant']} seed {row['seed']}: {checkpoint} is gone")
            continue
        row["val_miou"] = evaluate(checkpoint, "--split", "val")["miou"]
        test = evaluate(checkpoint, "--split", "test")
        row["test_miou"], row["test_map"] = test["miou"], test.get("map")
        row["shifted_miou"] = evaluate(checkpoint, "--split", "test", *SHIFTED)["miou"]
        print(json.dumps(row), flush=True)
    RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--table", action="store_true", help="print the results as markdown")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the finished runs of --variants and --seeds again with "
                        "this version's inference (their run directories must exist)")  # fmt: skip
    args = parser.parse_args()
    if args.reevaluate:
        reevaluate(args.variants, args.seeds)
        return
    if args.table:
        print(table(args.variants))
        return
    RESULTS.parent.mkdir(exist_ok=True)
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done():
                continue
            row = run(variant, seed)
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
