"""Which change makes Explainer masks class-specific? (issue 18)

Every variant continues the study's shared pre-trained classifier of its seed
(``rrr.study``'s ``runs/study/pretrain-classifier-seed{S}``, recreated when
missing) with an Explainer stage of ``--epochs x 125`` steps, then scores the
test masks with ``rrr.evaluate --explanation-metrics``. One JSON line per
finished run is appended to ``results/explainer_specificity.jsonl``; finished
runs are skipped, so the script can be stopped and started again.

    python experiments/explainer_specificity.py --seeds 0 --variants paper-small bce-unet
    python experiments/explainer_specificity.py --table        # markdown table of the file
    python experiments/explainer_specificity.py --table --write docs/finetuning.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rrr.study import Study, _evaluate, _finetune, budget, commit  # noqa: E402

RESULTS = ROOT / "results" / "explainer_specificity.jsonl"
RUNS = ROOT / "runs" / "explainer_specificity"

STAGE = ["--model", "explainer", "--lr", "1e-3", "--epochs", "3"]
VARIANTS: dict[str, list[str]] = {
    name: options.split()
    for name, options in {
        # the paper's loss only, the small Explainer (the study's network)
        "paper-small": "--explainer small --seg-weight 0",
        # + the pixel term as the study runs it: cross-entropy gated by the true labels
        "ce-small": "--explainer small --seg-weight 1 --loss ce",
        # + the pixel term on every class's mask, absent classes included
        "bce-small": "--explainer small --seg-weight 1 --loss bce",
        # a U-Net Explainer whose encoder starts from the pre-trained classifier
        "paper-unet": "--explainer unet --seg-weight 0",
        "ce-unet": "--explainer unet --seg-weight 1 --loss ce",
        "bce-unet": "--explainer unet --seg-weight 1 --loss bce",
        # the same at the authors' learning rate (1e-3 saturated every mask of the U-Net at 1)
        "paper-unet-lr1e-4": "--explainer unet --seg-weight 0 --lr 1e-4",
        "ce-unet-lr1e-4": "--explainer unet --seg-weight 1 --loss ce --lr 1e-4",
        "bce-unet-lr1e-4": "--explainer unet --seg-weight 1 --loss bce --lr 1e-4",
        # five times the pixel term; three times the steps (1,125)
        "bce5-unet-lr1e-4": "--explainer unet --seg-weight 5 --loss bce --lr 1e-4",
        "bce-unet-lr1e-4-long": "--explainer unet --seg-weight 1 --loss bce --lr 1e-4 --epochs 9",
        "bce20-unet-lr1e-4": "--explainer unet --seg-weight 20 --loss bce --lr 1e-4",
        "paper-unet-lr1e-4-long": "--explainer unet --seg-weight 0 --lr 1e-4 --epochs 9",
        "bce5-unet-lr1e-4-long": "--explainer unet --seg-weight 5 --loss bce --lr 1e-4 --epochs 9",
        "bce20-unet-lr1e-4-long": "--explainer unet --seg-weight 20 --loss bce --lr 1e-4 --epochs 9",
        # the paper's loss with the authors' VOC weights
        "authors-unet-lr1e-4-long": "--explainer unet --seg-weight 0 --lr 1e-4 --epochs 9 "
        "--explainer-loss entropy=3,area=0.8,present_sparsity=0.01",
    }.items()
}
KEYS = ("own", "other", "ratio", "absent", "continuous_iou")


def run(variant: str, seed: int, study: Study) -> dict:
    checkpoint, _ = study.pretrained("classifier", seed)
    out = RUNS / f"{variant}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [*budget(), *STAGE, *VARIANTS[variant], "--pixel-labels", "50", "--seed", str(seed),
            "--init-from", str(checkpoint), "--pretrain-epochs", "0", "--out", str(out),
            "--no-progress", "--overlays", "0"]  # fmt: skip
    start = time.time()
    error = _finetune(argv)
    row = {"variant": variant, "seed": seed, "commit": commit(), "argv": argv,
           "train_seconds": round(time.time() - start, 1)}  # fmt: skip
    if error:
        return {**row, "status": error}
    test = _evaluate(out / "checkpoint.pt", "test", "--explanation-metrics")
    explanation = test["explanation"]
    row.update({key: explanation[key] for key in KEYS})
    row["reference_continuous_iou"] = explanation["all_items_reference"]["continuous_iou"]
    row["test_miou"] = test["miou"]
    return {**row, "status": "ok"}


def table(rows: list[dict]) -> str:
    lines = ["| variant | seeds | own | other | ratio | absent | continuous IoU | test mIoU |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant in dict.fromkeys(r["variant"] for r in rows):
        ok = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
        if not ok:
            continue
        cells = []
        for key in (*KEYS, "test_miou"):
            values = [r[key] for r in ok]
            sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{sd}")
        seeds = ",".join(str(r["seed"]) for r in ok)
        lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--write", type=Path, help="with --table: replace the table in this page")
    args = parser.parse_args()
    rows = (
        [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    )
    if args.table:
        if args.write:
            begin, end = (
                "<!-- explainer-specificity:begin -->",
                "<!-- explainer-specificity:end -->",
            )
            page = args.write.read_text()
            head, rest = page.split(begin)
            page = f"{head}{begin}\n{table(rows)}\n{end}{rest.split(end)[1]}"
            args.write.write_text(page)
        print(table(rows))
        return 0
    done = {(r["variant"], r["seed"]) for r in rows if r["status"] == "ok"}
    study = Study(ROOT / "results" / "study.csv", ROOT / "runs" / "study", budget())
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            row = run(variant, seed, study)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                variant, seed, {k: row.get(k) for k in (*KEYS, "test_miou", "status")}, flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
