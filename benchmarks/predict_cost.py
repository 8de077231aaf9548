"""Prediction cost of trained segmenters, side by side: images per second and peak memory.

    python benchmarks/predict_cost.py            # the default checkpoints below; writes the table
    python benchmarks/predict_cost.py --checkpoint "heatmap (LRP)=runs/demo/checkpoint.pt" ...

Each case is ``model.predict(x)`` on the same batch of test scenes of the data
set the checkpoint was trained on; the rounds are interleaved so that load on a
shared machine hits every case alike, and the table gives the median of the
per-round times and images per second relative to the U-Net. For heatmap
segmenters two paths are timed: the default (``gating="predicted"``: presence is
decided first, then only the kept classes' maps are computed) and every class's
map (``gating="none"``, which is what prediction cost before presence came
first). Peak memory is the increase of the resident set during one call
(allocated memory on CUDA). Writes the ``predict_cost`` block of
docs/benchmarks.md.

The default checkpoints are the recipe sweep's and the study's seed-0 runs
(``python experiments/recipe.py --seeds 0 --variants cls10 mt-unet`` and
``python -m rrr.study --seeds 0 --labels 50 --methods unet explainer``);
checkpoints that do not exist are skipped with a note.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    ensure_malloc_mmap_threshold,
    environment,
    interleaved_times,
    markdown_table,
    peak_bytes,
    resolve_device,
)
from run_all import replace_block  # noqa: E402

DEFAULT = {
    "heatmap segmenter (LRP-epsilon)": "runs/recipe/cls10-seed0/checkpoint.pt",
    "Explainer segmenter (small)": "runs/study/explainer-50-seed0/checkpoint.pt",
    "multi-task U-Net": "runs/recipe/mt-unet-seed0/checkpoint.pt",
    "U-Net": "runs/study/unet-50-seed0/checkpoint.pt",
}


def main(argv: list[str] | None = None) -> None:
    ensure_malloc_mmap_threshold()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a case (repeatable; default: the checkpoints listed above)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", default=str(HERE.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)

    from rrr.data import build_dataset
    from rrr.loading import load_trained

    device = resolve_device(args.device)
    named = dict(item.split("=", 1) for item in args.checkpoint) or DEFAULT
    models, x, kept = {}, None, None
    for name, path in named.items():
        if not Path(path).exists():
            print(f"skipped {name}: {path} does not exist", file=sys.stderr)
            continue
        model, state = load_trained(path, device)
        if x is None:
            config = state["run_config"]
            data = build_dataset(config.data, "test", **config.data_options("test"))
            x = torch.stack([data[i]["image"] for i in range(args.batch)]).to(device)
        models[name] = model
        if getattr(model, "gating", None) == "predicted" and hasattr(model, "backend"):
            every = load_trained(path, device)[0]
            every.gating = "none"
            models[f"{name}, every class's map"] = every
            with torch.no_grad():
                kept = float(model.class_presence(model.classifier(x)).sum(1).float().mean())
    if x is None:
        raise SystemExit("no checkpoint found; see the module docstring for how to make them")

    cases = {name: (lambda m=model: m.predict(x)) for name, model in models.items()}
    times = interleaved_times(cases, args.repeats, device)
    medians = {name: statistics.median(t) for name, t in times.items()}
    unet = medians.get("U-Net")
    rows = []
    for name, seconds in medians.items():
        per_second = len(x) / seconds
        relative = "–" if unet is None else f"{unet / seconds:.2f}x"
        peak = peak_bytes(cases[name], device) / 2**20
        rows.append(
            [name, f"{seconds * 1000:.0f} ms", f"{per_second:.1f}", relative, f"{peak:.0f}"]
        )
        print(rows[-1], flush=True)
    env = environment(device)
    table = (
        f"Measured on {env['device']} ({env['processor']}, {env['threads']} threads), torch "
        f"{env['torch']}, batch {len(x)} test scenes at {x.shape[-1]} px, median of "
        f"{args.repeats} interleaved rounds; the heatmap segmenter kept {kept or 0:.1f} of "
        f"10 classes per image on average (`python benchmarks/predict_cost.py`).\n\n"
        + markdown_table(
            [
                "model",
                "predict, batch",
                "images / s",
                "images / s relative to U-Net",
                "peak memory (MiB)",
            ],
            rows,
        )  # fmt: skip
    )
    docs = Path(args.docs)
    docs.write_text(replace_block(docs.read_text(), "predict_cost", table))
    print(table)


if __name__ == "__main__":
    main()
