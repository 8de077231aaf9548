"""Which torchvision classifier works with which heatmap backend: writes docs/support.md.

    python benchmarks/support_matrix.py [--part a|b|both] [--models M ...] [--backends B ...]
                                        [--rerun] [--render-only]

Two parts, each a table of cells (model x backend):

* **(a) correctness**, the smallest model of each torchvision family, float64, a
  tiny input, random weights, 5 classes with a freshly initialised head, batch 1.
  A cell is ``correct`` when (i) the maps come with ``create_graph=True``, are
  finite, not all zero and give some parameter a gradient; (ii) a directional
  finite difference of a scalar loss of the maps w.r.t. sampled parameters
  matches autograd within :data:`FD_TOLERANCE`; (iii) for LRP, with every bias
  and BatchNorm shift zero, the map sums to the explained logit within
  :data:`CONSERVATION_TOLERANCE`; (iv) for LRP on the families zennit handles,
  the maps equal zennit's own attributor within :data:`ZENNIT_TOLERANCE`.
* **(b) coverage**, every model of ``torchvision.models.list_models(module=
  torchvision.models)``, float32, batch 1, the smallest input the model takes:
  maps with ``create_graph=True`` and one backward of a loss on them to the
  parameters. ``runs`` when the maps are finite and some parameter gets a
  finite, non-zero gradient.

Every cell gets a status: ``correct``/``runs``, ``wrong`` (a check failed or
NaN maps; the numbers are recorded), ``refused`` (the library raised its own
clear error, a ``ValueError``/``TypeError``/``NotImplementedError`` that names
the backend), ``crash`` (any other exception), ``timeout`` (over the per-cell
limit), ``skipped`` (over the memory guard). Each finished cell goes into
``docs/support.json`` at once (temporary file + rename), so a killed run
resumes where it stopped; ``--rerun`` recomputes the selected cells.
``docs/support.md`` is a pure function of that file (:func:`render`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the checks reuse the tests' helpers
from conftest import randomize_batchnorm  # noqa: E402
from test_gradcheck import directional_check  # noqa: E402
from test_lrp_families import normalised, zero_shifts  # noqa: E402
from test_reference import relative_error, zennit_maps  # noqa: E402

import heatmaps  # noqa: E402
from rrr.classifiers import replace_head  # noqa: E402

JSON_PATH = ROOT / "docs" / "support.json"
MD_PATH = ROOT / "docs" / "support.md"

FD_TOLERANCE = 1e-5
CONSERVATION_TOLERANCE = 1e-3
ZENNIT_TOLERANCE = 1e-6
NUM_CLASSES = 5
TARGET = 2
#: part (b) skips a model with more parameters than this (none of torchvision's has)
MAX_PARAMETERS = 1.5e9
#: per-cell wall-clock limits in seconds
TIMEOUTS = {"a": 900, "b": 600}
#: input sizes tried, smallest first, to find the smallest one a model takes
SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 480, 512, 518)

#: part (a): the smallest model of each torchvision family
PART_A_MODELS = [
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "resnet18",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
    "swin_t",
    "swin_v2_t",
    "vgg11",
    "vit_b_16",
    "wide_resnet50_2",
]

#: inputs larger than the smallest, by the model's name prefix: ConvNeXt's last feature map is
#: 1 x 1 at 32 px and a LayerNorm follows it, whose gradient is orthogonal to its input (scale
#: invariance), so every Grad-CAM map there is zero up to rounding (exactly zero in float32)
MIN_SIZES = {"convnext": 64}

#: models on which zennit's own attributor is the reference (iv), with its canonizer
ZENNIT_CANONIZERS = {
    "resnet18": "resnet",
    "resnext50_32x4d": "resnet",
    "wide_resnet50_2": "resnet",
    "vgg11": "batchnorm",
    "alexnet": "batchnorm",
    "squeezenet1_0": "batchnorm",
    "googlenet": "batchnorm",
}

#: options for the backends with a cost knob (fewer path points and noise samples)
OPTIONS = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"samples": 2, "seed": 0},
}
LRP_COMPOSITES = ("epsilon", "epsilon_plus_flat")
#: backends that need more than a classifier (the Explainer needs a trained network)
EXCLUDED = ("explainer",)

STATUSES = ("correct", "runs", "wrong", "refused", "crash", "timeout", "skipped", "pending")


# -- backends ---------------------------------------------------------------------------------
def backend_names() -> list[str]:
    """Every registered backend but the Explainer; LRP once per composite (``lrp-epsilon``)."""
    names = []
    for name in heatmaps.available():
        if name in EXCLUDED:
            continue
        if name == "lrp":
            names += [f"lrp-{c}" for c in LRP_COMPOSITES]
        else:
            names.append(name)
    return names


def make_heatmap(backend: str, model: nn.Module, **extra) -> heatmaps.Heatmap:
    name, _, composite = backend.partition("-")
    options = dict(OPTIONS.get(name, {}))
    if composite:
        options["composite"] = composite
    return heatmaps.get(name, model, **options, **extra)


# -- models -----------------------------------------------------------------------------------
def _construct(name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(name, weights=None)


def build_model(name: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Random weights, BatchNorm statistics randomised, a fresh random head of 5 classes.

    The head is replaced, not just resized: torchvision's ViT head is
    zero-initialised, which would make every map zero.
    """
    torch.manual_seed(seed)
    model = replace_head(_construct(name), NUM_CLASSES)
    return randomize_batchnorm(model).to(dtype).eval()


def describe(name: str) -> dict:
    """Number of parameters and the smallest input size (from a forward pass on ``meta``)."""
    try:
        with torch.device("meta"):
            model = _construct(name)
    except Exception:  # some builders compute on tensors (RegNet): build on the CPU
        model = _construct(name).to("meta")
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, size, size, device="meta"))
        except Exception:
            continue
        return {"parameters": params, "size": size}
    return {"parameters": params, "size": None}


def image(size: int, dtype: torch.dtype, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3)).to(dtype)


# -- one cell ---------------------------------------------------------------------------------
class CellTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CellTimeout` in the main thread after ``seconds`` (SIGALRM, Unix)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise CellTimeout(f"over the per-cell limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def classify_error(error: BaseException) -> dict:
    """``refused`` for the library's own clear errors, ``wrong`` for NaN maps, else ``crash``."""
    message = first_line(error)
    if isinstance(error, CellTimeout):
        return {"status": "timeout", "message": message}
    if isinstance(error, FloatingPointError):
        return {"status": "wrong", "message": message}
    text = str(error)
    own = text.startswith(tuple(f"{n}:" for n in _backend_classes())) or "backend '" in text
    if isinstance(error, (ValueError, TypeError, NotImplementedError)) and own:
        return {"status": "refused", "message": message}
    where = traceback.extract_tb(error.__traceback__)
    frame = where[-1] if where else None
    origin = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return {"status": "crash", "message": message + origin}


def _backend_classes() -> list[str]:
    return ["Heatmap"] + [
        f.__name__ for f in heatmaps.registry._BACKENDS.values() if isinstance(f, type)
    ]


def _sampled_parameters(model: nn.Module) -> list[str]:
    """First, middle and last weight tensors: the stem, a block, the head."""
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    picked = [names[0], names[len(names) // 2], names[-1]]
    return list(dict.fromkeys(picked))


def _parameter_gradient_check(maps: torch.Tensor, model: nn.Module) -> str | None:
    """None if a loss on the maps gives some parameter a finite, non-zero gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not maps.requires_grad:
        return "the maps do not depend on the parameters (requires_grad=False)"
    weights = torch.randn(maps.shape, generator=torch.Generator().manual_seed(5)).to(maps)
    grads = torch.autograd.grad((maps * weights).sum(), params, allow_unused=True)
    grads = [g for g in grads if g is not None]
    if not all(torch.isfinite(g).all() for g in grads):
        return "non-finite parameter gradient"
    if not any(g.abs().max() > 0 for g in grads):
        zero = " (the maps are all zero)" if not maps.abs().max() > 0 else ""
        return f"no parameter gets a gradient{zero}"
    return None


def _zennit_error(model: nn.Module, backend: str, x: torch.Tensor, canonizer: str) -> float:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    composite = backend.partition("-")[2]
    reference_model = copy.deepcopy(model)
    for module in reference_model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 0.0  # zennit's and the library's merges then agree to rounding
    targets = torch.tensor([TARGET] * x.shape[0])
    ours = make_heatmap(backend, reference_model)(x, targets)[:, 0]
    merge = ResNetCanonizer() if canonizer == "resnet" else SequentialMergeBatchNorm()
    return relative_error(ours, zennit_maps(reference_model, composite, merge, x, targets))


def _conservation_error(model: nn.Module, backend: str, x: torch.Tensor) -> float:
    zeroed = zero_shifts(copy.deepcopy(model))
    heatmap = make_heatmap(backend, zeroed, relevance="logit", epsilon=1e-30, stabilizer=1e-30)
    out = heatmap.explain(x, TARGET)
    total = out.maps.sum((1, 2, 3))
    logit = out.logits.gather(1, out.targets).squeeze(1)
    return ((total - logit).abs() / logit.abs()).max().item()


def maps_with_target(heatmap: heatmaps.Heatmap, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Maps (``create_graph=True``) of class :data:`TARGET` or, where they are all zero, of
    the class with the largest maps: Grad-CAM's ReLU zeroes a class whose weighted features
    sum below zero (on a 1 x 1 feature map, every class whose logit is below its bias),
    and a class with a tiny positive map is a difference of large terms."""
    maps = heatmap(x, TARGET, create_graph=True)
    if maps.abs().max() > 0:
        return maps, TARGET
    every = heatmap(x, "all")
    target = int(every.abs().amax(dim=(0, 2, 3)).argmax())
    if target == TARGET:
        return maps, TARGET
    return heatmap(x, target, create_graph=True), target


def check_correctness(name: str, model: nn.Module, backend: str, size: int) -> dict:
    """Part (a): the four checks on one float64 model; raises what the backend raises."""
    x = image(size, torch.float64)
    heatmap = make_heatmap(backend, model)
    maps, target = maps_with_target(heatmap, x)
    result: dict = {"size": size, "target": target}
    problem = _parameter_gradient_check(maps, model)
    if problem is not None:
        return {**result, "status": "wrong", "message": problem}
    del maps
    params = dict(model.named_parameters())
    sampled = _sampled_parameters(model)
    result["fd"] = directional_check(
        normalised(heatmap, x, target), x, torch.tensor([target]), [params[n] for n in sampled], 1
    )
    result["fd_parameters"] = sampled
    failures = []
    if not result["fd"] <= FD_TOLERANCE:
        failures.append(f"finite differences {result['fd']:.1e} > {FD_TOLERANCE:.0e}")
    if backend.startswith("lrp"):
        result["conservation"] = _conservation_error(model, backend, x)
        if not result["conservation"] <= CONSERVATION_TOLERANCE:
            failures.append(
                f"conservation {result['conservation']:.1e} > {CONSERVATION_TOLERANCE:.0e}"
            )
        if name in ZENNIT_CANONIZERS:
            result["zennit"] = _zennit_error(model, backend, x, ZENNIT_CANONIZERS[name])
            if not result["zennit"] <= ZENNIT_TOLERANCE:
                failures.append(f"zennit {result['zennit']:.1e} > {ZENNIT_TOLERANCE:.0e}")
    if failures:
        return {**result, "status": "wrong", "message": "; ".join(failures)}
    return {**result, "status": "correct"}


def check_runs(name: str, model: nn.Module, backend: str, size: int) -> dict:
    """Part (b): float32 maps with ``create_graph=True`` and one backward to the parameters."""
    heatmap = make_heatmap(backend, model)
    maps, _ = maps_with_target(heatmap, image(size, torch.float32))
    problem = _parameter_gradient_check(maps, model)
    if problem is not None:
        return {"size": size, "status": "wrong", "message": problem}
    return {"size": size, "status": "runs"}


PARTS = {
    "a": {"dtype": torch.float64, "check": check_correctness},
    "b": {"dtype": torch.float32, "check": check_runs},
}


def part_models(part: str) -> list[str]:
    if part == "a":
        return list(PART_A_MODELS)
    return sorted(torchvision.models.list_models(module=torchvision.models))


# -- the cache --------------------------------------------------------------------------------
def load(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"meta": {}, "plan": {}, "models": {}, "cells": {}}


def save(data: dict, path: Path) -> None:
    """Atomically: a half-written file never replaces a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def source_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "heatmaps", "rrr"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit} + uncommitted changes" if dirty else commit or "unknown"


def run(
    part: str,
    models: list[str] | None = None,
    backends: list[str] | None = None,
    json_path: Path = JSON_PATH,
    md_path: Path | None = MD_PATH,
    rerun: bool = False,
    builders: dict[str, Callable[[torch.dtype], nn.Module]] | None = None,
    sizes: dict[str, int] | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> dict:
    """Compute the missing cells of ``part`` and return the cache; see the module docstring.

    ``builders`` and ``sizes`` supply models that are not torchvision names
    (``builders[name](dtype)``) and their input size (the tests' tiny models).
    """
    from tqdm import tqdm

    builders = builders or {}
    sizes = sizes or {}
    data = load(json_path)
    models = models or part_models(part)
    backends = backends or backend_names()
    plan = data["plan"].setdefault(part, {"models": [], "backends": []})
    plan["models"] += [m for m in models if m not in plan["models"]]
    plan["backends"] += [b for b in backends if b not in plan["backends"]]
    cells = data["cells"].setdefault(part, {})
    running = data["meta"].pop(f"running_{part}", None)
    if running is not None:  # the previous process died inside this cell
        model_name, backend = running
        if "status" not in cells.get(model_name, {}).get(backend, {}):
            cells.setdefault(model_name, {})[backend] = {
                "status": "crash",
                "message": "the process died during this cell (killed, out of memory or a "
                "fatal error)",
            }
    todo = [(m, b) for m in models for b in backends if rerun or b not in cells.get(m, {})]
    meta = data["meta"].setdefault(part, {})
    meta.pop("seconds", None)  # older caches summed them here; the page sums the cells
    sources = meta.setdefault("sources", [])  # every version that computed some cell
    if source_version() not in sources:
        sources.append(source_version())
    meta.update(
        {
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        }
    )
    save(data, json_path)
    bar = tqdm(todo, desc=f"part ({part})", unit="cell", disable=not progress, file=sys.stderr)
    built: tuple[str, nn.Module | None, dict] | None = None
    try:
        for model_name, backend in bar:
            bar.set_postfix_str(f"{model_name} {backend}")
            data["meta"][f"running_{part}"] = [model_name, backend]
            save(data, json_path)
            if built is None or built[0] != model_name:
                built = None
                gc.collect()
            result, built = _cell(part, model_name, backend, built, builders, sizes, timeout)
            if built is not None:
                data["models"].setdefault(part, {})[model_name] = built[2]
            cells.setdefault(model_name, {})[backend] = result
            data["meta"].pop(f"running_{part}", None)
            save(data, json_path)
            gc.collect()
    finally:  # also when stopped (Ctrl-C, SIGTERM): the cell in flight stays pending
        bar.close()
        data["meta"].pop(f"running_{part}", None)
        save(data, json_path)
        if md_path is not None:
            md_path.write_text(render(data))
    return data


def _cell(
    part: str,
    model_name: str,
    backend: str,
    built: tuple | None,
    builders: dict,
    sizes: dict,
    timeout: float | None,
) -> tuple[dict, tuple | None]:
    """One cell's result, and the (name, model, info) built for it (reused by the next)."""
    start = time.perf_counter()
    try:
        if built is None:
            built = (model_name, *_prepare(part, model_name, builders, sizes))
        _, model, info = built
        if model is None:
            result = {"status": "skipped", "message": info["skip"]}
        else:
            with time_limit(timeout or TIMEOUTS[part]):
                result = PARTS[part]["check"](model_name, model, backend, info["size"])
            for p in model.parameters():
                p.grad = None
    except Exception as error:  # every cell gets a status; the run never dies on a model
        result = classify_error(error)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result, built


def _prepare(part: str, name: str, builders: dict, sizes: dict) -> tuple[nn.Module | None, dict]:
    dtype = PARTS[part]["dtype"]
    if name in builders:
        model = builders[name](dtype)
        return model, {
            "parameters": sum(p.numel() for p in model.parameters()),
            "size": sizes[name],
        }
    info = describe(name)
    if info["size"] is None:
        raise RuntimeError(f"no input size in {SIZES} works for {name}")
    for prefix, size in MIN_SIZES.items():
        if name.startswith(prefix):
            info["size"] = max(info["size"], size)
    if info["parameters"] > MAX_PARAMETERS:
        skip = f"too large for this machine ({info['parameters']:.2e} parameters)"
        return None, {**info, "skip": skip}
    return build_model(name, dtype), info


# -- docs/support.md --------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:.1e}" if value else "0"


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "pending"
    status = cell["status"]
    numbers = [
        f"{label} {_number(cell[key])}"
        for key, label in (("fd", "fd"), ("conservation", "cons"), ("zennit", "zennit"))
        if key in cell
    ]
    bold = f"**{status}**" if status in ("wrong", "crash", "timeout") else status
    return f"{bold} ({', '.join(numbers)})" if numbers else bold


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _part_section(data: dict, part: str, title: str, intro: str) -> list[str]:
    plan = data.get("plan", {}).get(part)
    if not plan:
        return [f"## {title}", "", "Not run yet.", ""]
    models, backends = plan["models"], plan["backends"]
    cells = data.get("cells", {}).get(part, {})
    infos = data.get("models", {}).get(part, {})
    meta = data.get("meta", {}).get(part, {})
    lines = [f"## {title}", "", intro, ""]
    seconds = [c.get("seconds", 0.0) for m in models for c in cells.get(m, {}).values()]
    minutes = sum(seconds) / 60
    lines.append(
        f"Last computed on {meta.get('date', '?')}, from commit "
        f"{' and (later cells) '.join(meta.get('sources', ['?']))}, torch "
        f"{meta.get('torch', '?')}, torchvision {meta.get('torchvision', '?')} "
        f"({meta.get('machine', '?')}); the cells took {minutes:.0f} minutes."
    )
    lines.append("")
    lines.append("| model | input | " + " | ".join(f"`{b}`" for b in backends) + " |")
    lines.append("|---|---|" + "---|" * len(backends))
    notes = []
    for model in models:
        info = infos.get(model, {})
        size = f"{info['size']} px" if info.get("size") else "?"
        row = [f"`{model}`", size]
        for backend in backends:
            cell = cells.get(model, {}).get(backend)
            row.append(_cell_text(cell))
            if cell is not None and "message" in cell:
                notes.append((model, backend, cell["status"], cell["message"]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Totals per backend, part ({part}):", ""]
    lines += _totals(plan, cells)
    if notes:
        lines += [
            "",
            f"Messages, part ({part}) (the first line of the error, or the failed check):",
            "",
        ]
        lines += ["| model | backend | status | message |", "|---|---|---|---|"]
        for model, backend, status, message in notes:
            lines.append(f"| `{model}` | `{backend}` | {status} | {_escape(message)} |")
    lines.append("")
    return lines


def totals(plan: dict, cells: dict) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for backend in plan["backends"]:
        row = counts.setdefault(backend, {})
        for model in plan["models"]:
            status = cells.get(model, {}).get(backend, {}).get("status", "pending")
            row[status] = row.get(status, 0) + 1
    return counts


def _totals(plan: dict, cells: dict) -> list[str]:
    counts = totals(plan, cells)
    used = [s for s in STATUSES if any(s in row for row in counts.values())]
    lines = ["| backend | " + " | ".join(used) + " |", "|---|" + "---|" * len(used)]
    for backend, row in counts.items():
        lines.append(f"| `{backend}` | " + " | ".join(str(row.get(s, 0)) for s in used) + " |")
    return lines


INTRO = """\
# Support matrix: every torchvision classifier, every backend

<!-- generated by benchmarks/support_matrix.py from docs/support.json; do not edit by hand -->

Which torchvision classification architecture works with which heatmap backend,
measured, not claimed. Every backend that `heatmaps.available()` lists is a
column, except the Explainer (it needs a trained Explainer network); LRP
appears twice, with the `epsilon` and the `epsilon_plus_flat` composites.
Integrated Gradients run with `n_steps=4` and SmoothGrad with `samples=2`
(to keep the cost down; the number of steps does not change what is computed
per step). Each model has random weights (`torch.manual_seed(0)`), randomised
BatchNorm statistics and a freshly initialised random head of 5 classes
(torchvision's ViT head is zero-initialised, which makes every map zero);
the input is a random image of the smallest size the model takes (tried
from 32 px upwards), and the explained class is class 2 (or, where its maps
are all zero, the class with the largest maps: Grad-CAM's ReLU zeroes a class
whose weighted features sum below zero, e.g. on a 1 x 1 feature map).
ConvNeXt gets 64 px: at 32 px its last feature map is 1 x 1 and a LayerNorm
follows it, whose gradient is orthogonal to its input, so every Grad-CAM map
is zero up to rounding there (exactly zero in float32; a property of Grad-CAM
before a LayerNorm, not of the implementation), and a finite difference of
rounding errors checks nothing.
What each backend computes and which layers LRP has rules for is in
[heatmap backends](concepts/backends.md) and [LRP rules](concepts/lrp_rules.md).

Regenerate with

```bash
OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/support_matrix.py --part both
```

Finished cells are cached in `docs/support.json` and skipped on the next
start (`--rerun` recomputes them; `--models` and `--backends` select cells);
a killed run resumes where it stopped. This page is generated from that file
(`--render-only` regenerates it alone), and `tests/test_support.py` checks
that the two agree.

Statuses:

- **correct** (part a) / **runs** (part b): every check below passed.
- **wrong**: a check failed (the numbers are given), or the maps were NaN or
  Inf (the library's `FloatingPointError`), or no parameter got a gradient.
- **refused**: the library raised its own clear error (`ValueError`,
  `TypeError` or `NotImplementedError` that names the backend and what is
  missing); its first line is listed under the table.
- **crash**: any other exception (listed under the table).
- **timeout**: over the per-cell limit (15 minutes in part a, 10 in part b).
- **skipped**: over the memory guard, more than 1.5e9 parameters (no
  torchvision model has that many; the largest have about 6.4e8).
- **pending**: not computed yet (the run was stopped before this cell).
"""

PART_A_INTRO = f"""\
The smallest model of each torchvision family, in float64, batch 1. A cell is
*correct* when

1. the maps, computed with `create_graph=True`, are finite and a random
   weighted sum of them gives some parameter a finite, non-zero gradient;
2. **fd**: the directional derivative of a random weighted sum of the maps
   w.r.t. three sampled weight tensors (the first, the middle and the last
   weight of the model: stem, a block, the head) matches a fourth-order
   central finite difference (`tests/test_gradcheck.py`'s check, one
   direction, the maps divided by a fixed scale from a first call as in
   `tests/test_lrp_families.py`) with relative error at most {FD_TOLERANCE:.0e};
3. **cons** (LRP only): with every bias and BatchNorm shift zero (running mean
   too), `relevance="logit"` and epsilon = stabiliser = 1e-30, the map sums to
   the explained logit with relative error at most {CONSERVATION_TOLERANCE:.0e};
4. **zennit** (LRP, on {", ".join(f"`{m}`" for m in ZENNIT_CANONIZERS)}, the
   families whose layers zennit's own attributor handles): the maps equal
   zennit's (`ResNetCanonizer` for the ResNet family, `SequentialMergeBatchNorm`
   otherwise; BatchNorm epsilon set to 0) with relative error at most
   {ZENNIT_TOLERANCE:.0e}.

The numbers in a cell are these relative errors."""

PART_B_INTRO = """\
Every model of `torchvision.models.list_models(module=torchvision.models)`, in
float32, batch 1: the maps with `create_graph=True`, then one backward of a
random weighted sum of the maps to the parameters. A cell *runs* when the maps
are finite and some parameter gets a finite, non-zero gradient. No
finite-difference or conservation check here: part (a) does those on one model
per family, which shares its layers with the rest of the family."""


def render(data: dict) -> str:
    """docs/support.md from the cache alone (a pure function: same json, same page)."""
    lines = [INTRO]
    lines += _part_section(data, "a", "Part (a): correctness, one model per family", PART_A_INTRO)
    lines += _part_section(data, "b", "Part (b): every torchvision classifier", PART_B_INTRO)
    return "\n".join(lines).rstrip() + "\n"


def _stop(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--models", nargs="+", help="only these models (default: the part's)")
    parser.add_argument("--backends", nargs="+", help=f"only these of {backend_names()}")
    parser.add_argument("--rerun", action="store_true", help="recompute finished cells")
    parser.add_argument("--render-only", action="store_true", help="only rewrite the page")
    parser.add_argument("--json", type=Path, default=JSON_PATH)
    parser.add_argument("--out", type=Path, default=MD_PATH)
    parser.add_argument("--timeout", type=float, help="per-cell limit in seconds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        args.out.write_text(render(load(args.json)))
        return 0
    unknown = set(args.backends or []) - set(backend_names())
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)}; available: {backend_names()}")
    signal.signal(signal.SIGTERM, _stop)
    for part in ["a", "b"] if args.part == "both" else [args.part]:
        models = args.models
        if models is not None and args.part == "both":
            models = [m for m in models if m in part_models(part)]
            if not models:
                continue
        run(
            part,
            models,
            args.backends,
            args.json,
            args.out,
            args.rerun,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
