"""Every bad input to the library gives one clear error and leaves the model as it was.

:data:`CASES` is the table of library cases: an id, how the case is triggered,
the exception type, and a regex the one-line message must match. Each case
runs over every backend it applies to (``tests/backends.py`` plus the
Explainer backend), and for each the test asserts

* the exception type and the regex;
* that ``str(exc)`` is one line, raised by the library itself (the innermost
  frame is in the ``heatmaps`` package, not deep inside torch) with no chained
  traceback;
* that the model is unchanged afterwards (hooks, modes, ``requires_grad``
  flags, parameters bitwise and their version counters, buffers, ``.grad``).

``fixed`` marks the cases that used to fail (a silently wrong result, or a raw
error from deep inside torch); the others behaved well already and are kept
here so that they stay so (several are also in ``tests/test_targets.py``).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torchvision
from backends import BACKENDS
from conftest import SmallResNet, assert_unchanged, randomize_batchnorm, snapshot
from torch import Tensor, nn

import heatmaps
from heatmaps.explainer import ExplainerHeatmap, build_explainer

Factory = Callable[[nn.Module], heatmaps.Heatmap]

#: the backends of tests/backends.py, and the Explainer backend with a small Explainer
ALL_BACKENDS: dict[str, Factory] = {
    **BACKENDS,
    "explainer": lambda m: ExplainerHeatmap(m, _explainer(_num_classes(m))),
}
LRP = tuple(name for name in ALL_BACKENDS if name.startswith("lrp"))
NOT_LRP = tuple(name for name in ALL_BACKENDS if not name.startswith("lrp"))
#: backends whose maps are computed from the model's gradients (the Explainer's are its own output)
FROM_MODEL = tuple(name for name in ALL_BACKENDS if name != "explainer")
WITH_CHANNEL_REDUCTION = (
    *LRP,
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
)


def _num_classes(model: object) -> int:
    if not isinstance(model, nn.Module):
        return 2
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 2


def _explainer(num_classes: int) -> nn.Module:
    torch.manual_seed(1)
    return build_explainer("small", num_classes, width=4).double()


# -- models -----------------------------------------------------------------------------------
def small() -> nn.Module:
    """Conv + BatchNorm + in-place ReLU + residual + GAP + Linear, float64, eval mode."""
    torch.manual_seed(0)
    return randomize_batchnorm(SmallResNet()).double().eval()


def small_train() -> nn.Module:
    return small().train()


def bn1d_head() -> nn.Module:
    """A classifier whose head has a BatchNorm1d: it sees one value per channel in a batch of one."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 4),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Linear(4, 3),
        )
        .double()
        .train()
    )


class Scale(nn.Module):
    """A custom layer with a learned parameter: ``x * w``, for which LRP has no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


class MirrorDifference(nn.Module):
    """``conv(x) - flip(x)``: a difference of two input-dependent tensors in ``forward`` code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) - x.flip(-1)


def with_layer(layer: nn.Module) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            layer,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ).double()

    return build


@functools.lru_cache(maxsize=1)
def convnext() -> nn.Module:
    """torchvision ConvNeXt-T: LayerNorm, layer scale, GELU; shared (every case leaves it unchanged)."""
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(num_classes=3).double().eval()


def overflowing() -> nn.Module:
    """Finite parameters whose products overflow float64: logits and maps become non-finite."""
    model = small()
    with torch.no_grad():
        model.conv2.weight.mul_(1e300)
        model.fc.weight.mul_(1e300)
    return model


def on_meta() -> nn.Module:
    return small().to("meta")


def segmenter() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()).double()


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = small()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.inner(x)
        return out, out


# -- inputs -----------------------------------------------------------------------------------
def image(batch: int = 2, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.rand(batch, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))


def with_value(value: float) -> Tensor:
    x = image()
    x[1, 2, 3, 4] = value
    return x


def inference_tensor() -> Tensor:
    with torch.inference_mode():
        return image()


# -- triggers ---------------------------------------------------------------------------------
def call(x: Callable[[], Tensor] = image, targets: object = 1, **kw: object) -> Callable:
    """Build the backend, then call it on ``x()`` with ``targets``."""

    def trigger(make: Factory, model: nn.Module) -> object:
        heatmap = make(model)
        return heatmap(x(), targets, **kw)

    return trigger


def under(context: Callable[[], object], create_graph: bool = False) -> Callable:
    def trigger(make: Factory, model: nn.Module) -> object:
        heatmap = make(model)
        x = image()
        with context():
            return heatmap(x, 1, create_graph=create_graph)

    return trigger


def build(**options: object) -> Callable:
    """Build the backend through the registry with ``options`` (errors at construction)."""

    def trigger(make: Factory, model: nn.Module) -> object:
        return heatmaps.get(_registry_name(make(model)), model, **options)

    return trigger


def _registry_name(heatmap: heatmaps.Heatmap) -> str:
    return heatmap.name


def construct(factory: Callable[[nn.Module], object]) -> Callable:
    """Build ``factory(model)`` (errors at construction)."""

    def trigger(make: Factory, model: nn.Module) -> object:
        return factory(model)

    return trigger


def construct_backend(make: Factory, model: nn.Module) -> object:
    """Build the backend under test around ``model`` (errors at construction)."""
    return make(model)


@dataclass(frozen=True)
class Case:
    """One bad input: how to trigger it and the one-line error it must give."""

    id: str
    how: str
    error: type[BaseException]
    match: str
    trigger: Callable[[Factory, nn.Module], object]
    model: Callable[[], nn.Module] = small
    backends: tuple[str, ...] | None = None  # None: every backend
    fixed: bool = False  # True: silently wrong or a raw deep error before this change


CASES: list[Case] = [
    # ---- input ------------------------------------------------------------------------------
    Case("input-not-a-tensor", "a nested list instead of a tensor", TypeError,
         r"^input: expected a torch\.Tensor, got list", call(lambda: [[0.0]])),
    Case("input-integer", "a uint8 image batch", TypeError,
         r"^input: expected a floating-point image tensor, got dtype torch\.uint8",
         call(lambda: torch.zeros(1, 3, 8, 8, dtype=torch.uint8))),
    Case("input-wrong-rank", "a single (C, H, W) image", ValueError,
         r"^input: expected a batch of images of shape \(B, C, H, W\), got 3 dimensions",
         call(lambda: image()[0])),
    Case("input-empty-batch", "a (0, 3, 8, 8) batch", ValueError, r"^input: the batch is empty",
         call(lambda: image()[:0])),
    Case("input-nan", "one NaN pixel", ValueError,
         r"^input: contains NaN or Inf values \(first in sample 1\)",
         call(lambda: with_value(float("nan"))), fixed=True),
    Case("input-inf", "one +Inf pixel", ValueError,
         r"^input: contains NaN or Inf values \(first in sample 1\)",
         call(lambda: with_value(float("inf"))), fixed=True),
    Case("input-inference-tensor", "an input made under torch.inference_mode()", ValueError,
         r"^input: is an inference tensor", call(inference_tensor), fixed=True),
    Case("input-dtype-mismatch", "float32 input, float64 model", ValueError,
         r"^input: dtype torch\.float32 differs from the model's parameters \(torch\.float64\)",
         call(lambda: image(dtype=torch.float32)), fixed=True),
    Case("input-device-mismatch", "CPU input, model on the meta device", ValueError,
         r"^input: on device cpu but the model's parameters are on meta",
         call(), model=on_meta, fixed=True),
    # ---- calling context --------------------------------------------------------------------
    Case("inference-mode", "a call under torch.inference_mode()", RuntimeError,
         r"^inference_mode: heatmaps need autograd and cannot run under torch\.inference_mode\(\)",
         under(torch.inference_mode), fixed=True),
    Case("create-graph-under-no-grad", "create_graph=True under torch.no_grad()", RuntimeError,
         r"^create_graph=True asks for a graph but grad mode is disabled \(torch\.no_grad\(\)\)",
         under(torch.no_grad, create_graph=True), fixed=True),
    # ---- model state ------------------------------------------------------------------------
    Case("batch-of-one-train-batchnorm", "a batch of one through a train-mode BatchNorm1d head",
         ValueError, r"^batch of one: BatchNorm layer '5' is in training mode .* model\.eval\(\)",
         call(lambda: image(1)), model=bn1d_head, backends=NOT_LRP, fixed=True),
    Case("lrp-train-batchnorm", "LRP on a model whose BatchNorm layers are in train mode",
         ValueError,
         r"^LRPHeatmap: BatchNorm layer 'bn1' \(BatchNorm2d\) is in training mode.*"
         r"model\.eval\(\) or rrr\.segmenters\.freeze_batchnorm",
         call(), model=small_train, backends=LRP, fixed=True),
    Case("lrp-batch-of-one-train-batchnorm", "LRP, batch of one, train-mode BatchNorm1d head",
         ValueError, r"^LRPHeatmap: BatchNorm layer '5' \(BatchNorm1d\) is in training mode",
         call(lambda: image(1)), model=bn1d_head, backends=LRP, fixed=True),
    Case("lrp-custom-layer-with-parameter", "LRP on a model with a custom Scale(nn.Module) layer",
         ValueError,
         r"^LRPHeatmap: layer '1' \(Scale, has parameters\) has no rule in composite '\w+'",
         construct_backend, model=with_layer(Scale()), backends=LRP, fixed=True),
    Case("lrp-unmapped-normalisation", "LRP on a model with an InstanceNorm2d (no parameters)",
         ValueError,
         r"^LRPHeatmap: layer '1' \(InstanceNorm2d, is not known to pass relevance\) has no rule",
         construct_backend, model=with_layer(nn.InstanceNorm2d(4)), backends=LRP,
         fixed=True),
    Case("lrp-unsupported-function", "LRP on a layer whose forward computes conv(x) - flip(x)",
         ValueError,
         r"^LRPHeatmap: function torch\.Tensor\.\w+ in '1' \(MirrorDifference\): no LRP rule",
         call(), model=with_layer(MirrorDifference()), backends=LRP, fixed=True),
    Case("lrp-convnext", "LRP on torchvision ConvNeXt-T (LayerNorm, layer scale, GELU)",
         ValueError,
         r"^LRPHeatmap: layer 'features\.0\.1' \(LayerNorm2d, has parameters\) has no rule in "
         r"composite '\w+' \(and \d+ more\)",
         construct_backend, model=convnext, backends=LRP, fixed=True),
    # ---- maps -------------------------------------------------------------------------------
    Case("maps-non-finite", "finite input, parameters whose products overflow float64",
         FloatingPointError,
         r"^\w+Heatmap: the maps are non-finite \(NaN or Inf, first in sample 0\) although the "
         r"input is finite", call(), model=overflowing, backends=FROM_MODEL, fixed=True),
    # ---- targets ----------------------------------------------------------------------------
    Case("target-int-out-of-range", "targets=5 for 5 classes", ValueError,
         r"^targets: class index 5 is out of range for a classifier with 5 classes", call(targets=5)),
    Case("target-negative", "targets=-1", ValueError, r"^targets: class index -1 is out of range",
         call(targets=-1)),
    Case("target-wrong-length", "a (3,) target tensor for a batch of 2", ValueError,
         r"^targets: a \(B,\) tensor must have one class per sample", call(targets=torch.tensor([0, 1, 2]))),
    Case("target-bk-out-of-range", "a (B, K) target with class 9", ValueError,
         r"^targets: class index 9 is out of range", call(targets=torch.tensor([[0], [9]]))),
    Case("target-k-zero", "a (B, 0) target tensor", ValueError, r"^targets: .* needs K >= 1",
         call(targets=torch.zeros(2, 0, dtype=torch.long))),
    Case("target-rank-3", "a (B, 1, 1) target tensor", ValueError,
         r"^targets: expected a tensor of shape \(B,\) or \(B, K\), got 3 dimensions",
         call(targets=torch.zeros(2, 1, 1, dtype=torch.long))),
    Case("target-float", "a float target tensor", TypeError,
         r"^targets: class indices must be an integer tensor", call(targets=torch.tensor([0.0, 1.0]))),
    Case("target-multi-hot-shape", "a (B, 4) bool target for 5 classes", ValueError,
         r"^targets: a multi-hot bool tensor must have shape \(B, C\) = \(2, 5\)",
         call(targets=torch.zeros(2, 4, dtype=torch.bool))),
    Case("target-unknown-string", "targets='some'", ValueError, r"^targets: unknown string 'some'",
         call(targets="some")),
    Case("target-list", "targets=[0, 1]", TypeError,
         r"^targets: expected None, int, 'all' or a tensor, got list", call(targets=[0, 1])),
    Case("target-bool", "targets=True", TypeError, r"^targets: a bool is not a class index",
         call(targets=True)),
    # ---- models that are not classifiers ----------------------------------------------------
    Case("model-not-a-classifier", "a segmenter returning (B, 2, H, W)", ValueError,
         r"^model: a classifier must return logits of shape \(B, C\)", call(targets=0),
         model=segmenter),
    Case("model-returns-tuple", "a model returning a tuple", TypeError,
         r"^model: a classifier must return a tensor of logits \(B, C\), got tuple", call(),
         model=TupleOut),
    Case("model-not-a-module", "a string instead of a model", TypeError,
         r"^model: expected a torch\.nn\.Module, got str",
         lambda make, model: make("not a model")),
    # ---- options ----------------------------------------------------------------------------
    Case("backend-misspelled", "heatmaps.get('lrpp', model)", ValueError,
         r"^heatmaps\.get: unknown backend 'lrpp'; available: .*lrp",
         lambda make, model: heatmaps.get("lrpp", model), backends=("saliency",)),
    Case("backend-option-misspelled", "heatmaps.get(name, model, channel_reductio='sum')",
         TypeError, r"unexpected keyword argument 'channel_reductio'",
         build(channel_reductio="sum"), backends=("saliency", "gradcam", "lrp-epsilon")),
    Case("composite-misspelled", "LRPHeatmap(model, composite='epsilon_plus_flatt')", ValueError,
         r"^composite: unknown name 'epsilon_plus_flatt'; available: ",
         construct(lambda m: heatmaps.LRPHeatmap(m, composite="epsilon_plus_flatt")),
         backends=("lrp-epsilon",)),
    Case("composite-option-misspelled", "LRPHeatmap(model, 'epsilon', epsilonn=0.1)", TypeError,
         r"unexpected keyword argument 'epsilonn'",
         construct(lambda m: heatmaps.LRPHeatmap(m, "epsilon", epsilonn=0.1)),
         backends=("lrp-epsilon",)),
    Case("canonizers-misspelled", "LRPHeatmap(model, canonizers='sometimes')", ValueError,
         r"^canonizers: expected 'auto' or a list, got 'sometimes'",
         construct(lambda m: heatmaps.LRPHeatmap(m, canonizers="sometimes")),
         backends=("lrp-epsilon",)),
    Case("relevance-misspelled", "LRPHeatmap(model, relevance='logits')", ValueError,
         r"^relevance: expected 'one_hot' or 'logit', got 'logits'",
         construct(lambda m: heatmaps.LRPHeatmap(m, relevance="logits")), backends=("lrp-epsilon",)),
    Case("unsupported-misspelled", "LRPHeatmap(model, unsupported='warning')", ValueError,
         r"^unsupported: expected 'error' or 'warn', got 'warning'",
         construct(lambda m: heatmaps.LRPHeatmap(m, unsupported="warning")),
         backends=("lrp-epsilon",), fixed=True),
    Case("channel-reduction-misspelled", "channel_reduction='summ' when the backend is built",
         ValueError, r"^channel_reduction: expected 'sum', 'abs_sum' or 'max_abs', got 'summ'",
         build(channel_reduction="summ"), backends=WITH_CHANNEL_REDUCTION, fixed=True),
    Case("gradcam-layer-misspelled", "GradCAMHeatmap(model, layer='layer9')", ValueError,
         r"^GradCAMHeatmap: model has no module named 'layer9'",
         construct(lambda m: heatmaps.GradCAMHeatmap(m, layer="layer9")), backends=("gradcam",)),
    Case("gradcam-mode-misspelled", "GradCAMHeatmap(model, mode='bilinar')", ValueError,
         r"^mode: 'bilinar' is not an F\.interpolate mode",
         construct(lambda m: heatmaps.GradCAMHeatmap(m, mode="bilinar")),
         backends=("gradcam",), fixed=True),
    Case("integrated-gradients-steps", "IntegratedGradientsHeatmap(model, n_steps=0)", ValueError,
         r"^n_steps: expected >= 1, got 0",
         construct(lambda m: heatmaps.IntegratedGradientsHeatmap(m, n_steps=0)),
         backends=("integrated_gradients",)),
    Case("smoothgrad-samples", "SmoothGradHeatmap(model, samples=0)", ValueError,
         r"^samples: expected >= 1, got 0",
         construct(lambda m: heatmaps.SmoothGradHeatmap(m, samples=0)), backends=("smoothgrad",)),
    Case("smoothgrad-negative-stdev", "SmoothGradHeatmap(model, stdev=-0.1)", ValueError,
         r"^stdev: expected a standard deviation >= 0, got -0\.1",
         construct(lambda m: heatmaps.SmoothGradHeatmap(m, stdev=-0.1)), backends=("smoothgrad",),
         fixed=True),
    Case("explainer-not-a-module", "ExplainerHeatmap(model, 'not a network')", TypeError,
         r"^explainer: expected a torch\.nn\.Module",
         construct(lambda m: ExplainerHeatmap(m, "not a network")), backends=("explainer",)),
]  # fmt: skip


def _params() -> list:
    out = []
    for case in CASES:
        for backend in case.backends or tuple(ALL_BACKENDS):
            out.append(pytest.param(case, backend, id=f"{case.id}-{backend}"))
    return out


def comparable(state: dict) -> dict:
    """A snapshot that ``assert_unchanged`` can compare: meta-device values have none, so they
    are replaced by one placeholder (identities, version counters and the rest are kept)."""
    if not any(value.is_meta for _, value, _ in state["params"]):
        return state
    placeholder = torch.zeros(())
    params = [(ident, placeholder, version) for ident, _, version in state["params"]]
    return {**state, "params": params, "buffers": []}


def assert_one_clear_error(info: pytest.ExceptionInfo, match: str) -> None:
    """One line matching ``match``, raised by the library, with no chained traceback."""
    error = info.value
    message = str(error)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert re.search(match, message), f"{message!r} does not match {match!r}"
    innermost = str(info.traceback[-1].path)
    assert "/heatmaps/" in innermost, f"raised deep inside {innermost}, not by the library"
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize("case, backend", _params())
def test_bad_input_gives_one_clear_error(case: Case, backend: str) -> None:
    model = case.model()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "did not already require gradients"
        with pytest.raises(case.error) as info:
            case.trigger(ALL_BACKENDS[backend], model)
    assert_one_clear_error(info, case.match)
    assert_unchanged(comparable(before), comparable(snapshot(model)))


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


# -- the device check on a real accelerator ---------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", sorted(ALL_BACKENDS))
def test_cuda_input_and_cpu_model(backend: str) -> None:
    model = small()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        ALL_BACKENDS[backend](model)(image().cuda(), 1)
    assert_one_clear_error(info, r"^input: on device cuda:0 but the model's parameters are on cpu")
    assert_unchanged(before, snapshot(model))


# -- what keeps working -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(ALL_BACKENDS))
def test_no_grad_without_create_graph_still_works(backend: str) -> None:
    """The rrr code calls backends under no_grad at inference: no graph, same maps."""
    model = small()
    heatmap = ALL_BACKENDS[backend](model)
    x = image()
    expected = heatmap(x, "all")
    with torch.no_grad():
        maps = heatmap(x, "all")
    assert not maps.requires_grad
    assert torch.equal(maps, expected)


@pytest.mark.parametrize("backend", sorted(ALL_BACKENDS))
def test_check_finite_off_gives_the_maps(backend: str) -> None:
    """``check_finite = False`` skips both checks: non-finite input gives whatever maps it gives."""
    model = small()
    heatmap = ALL_BACKENDS[backend](model)
    heatmap.check_finite = False
    maps = heatmap(with_value(float("nan")), 1)
    assert maps.shape == (2, 1, 8, 8)
    assert torch.isfinite(maps[0]).all()  # the clean sample is unaffected


@pytest.mark.parametrize("backend", sorted(FROM_MODEL))
def test_finiteness_check_keeps_the_graph(backend: str) -> None:
    model = small()
    maps = ALL_BACKENDS[backend](model)(image(), 1, create_graph=True)
    grads = torch.autograd.grad(maps.square().sum(), list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_lrp_unsupported_warn_lists_every_layer_once_and_falls_back_to_the_gradient() -> None:
    model = with_layer(Scale())()
    before = snapshot(model)
    with pytest.warns(UserWarning) as record:
        heatmap = heatmaps.LRPHeatmap(model, composite="epsilon", unsupported="warn")
    (warning,) = [w for w in record if "no rule" in str(w.message)]
    message = str(warning.message)
    assert "\n" not in message
    assert re.search(
        r"^LRPHeatmap: 1 layer\(s\) have no rule in composite 'epsilon': '1' \(Scale", message
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same layers
        maps = heatmap(image(), 1)
    assert maps.shape == (2, 1, 8, 8) and torch.isfinite(maps).all()
    assert_unchanged(before, snapshot(model))


def test_lrp_checks_again_when_the_model_changes_after_construction() -> None:
    model = with_layer(nn.Identity())()
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon")
    model[1] = Scale()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        heatmap(image(), 1)
    assert_one_clear_error(info, r"^LRPHeatmap: layer '1' \(Scale, has parameters\)")
    assert_unchanged(before, snapshot(model))


def test_lrp_with_frozen_batchnorm_in_a_train_mode_model_works() -> None:
    """What ``rrr.segmenters.freeze_batchnorm`` does: the model trains, its BatchNorms are frozen."""
    model = small_train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    before = snapshot(model)
    out = heatmaps.LRPHeatmap(model, composite="epsilon").explain(image(), 1)
    assert torch.allclose(out.logits, model(image()), rtol=1e-12, atol=1e-12)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg11_bn", "alexnet"])
def test_lrp_families_are_covered(arch: str) -> None:
    """No error and no warning on the architectures LRP supports (``rrr.classifiers.LRP_FAMILIES``)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for composite in ("epsilon", "epsilon_plus_flat"):
            maps = heatmaps.LRPHeatmap(model, composite=composite)(torch.rand(1, 3, 64, 64), 1)
            assert maps.shape == (1, 1, 64, 64) and torch.isfinite(maps).all()
