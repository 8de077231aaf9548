"""The configuration of one ``rrr.finetune`` run: a typed, frozen dataclass.

:class:`RunConfig` is the one place where every option of ``python -m
rrr.finetune`` is declared, with its type, default, choices and help text; the
command-line parser is generated from it (:func:`finetune_parser`), and
``rrr.evaluate`` reuses the data options (:func:`add_data_options`). A
checkpoint stores the configuration as plain data (:meth:`RunConfig.to_dict`,
loadable with ``torch.load(weights_only=True)``) and :meth:`RunConfig.from_dict`
reads it back, also from checkpoints written before this class existed (options
added since then take their defaults, which reproduce the old behaviour).

Adding an option is one field here; the parser, the checkpoint and the
generated CLI reference (docs/cli.md) follow.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "SECTIONS",
    "ConfigError",
    "OneLineParser",
    "RunConfig",
    "add_data_options",
    "finetune_parser",
    "parse_config",
]


class ConfigError(ValueError):
    """Options that cannot work together; the message names them."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``), exit status 2.

    argparse prints the whole usage first, which buries the one line that
    says what is wrong; ``--help`` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


SECTIONS = {
    "model": "Model and heatmaps",
    "loss": "Loss and schedule",
    "data": "Data",
    "run": "Run",
}
"""Headings of the option groups, in the order ``--help`` and docs/cli.md show them."""


# -- argument types ------------------------------------------------------------------------------
def _pair(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return low, high


def _bounded(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"expected a {'positive number' if strict else 'number >= 0'}, got {text}"
            )
        return value

    parse.__name__ = f"{'positive' if strict else 'non_negative'}_{kind.__name__}"
    return parse


positive_int = _bounded(int, 0, strict=True)
positive_float = _bounded(float, 0.0, strict=True)
non_negative_int = _bounded(int, 0, strict=False)
non_negative_float = _bounded(float, 0.0, strict=False)


def count_or_all(text: str) -> int | str:
    """A number >= 0, or ``all``."""
    if text == "all":
        return "all"
    return non_negative_int(text)


def _choices(source: str) -> Callable[[], list[str]]:
    """Choices read from a registry when the parser is built (no second list here)."""

    def read() -> list[str]:
        if source == "data":
            from .data import dataset_names

            return list(dataset_names())
        if source == "model":
            from .segmenters import segmenter_names

            return list(segmenter_names())
        if source == "loss":
            from .losses import LOSSES

            return sorted(LOSSES)
        raise KeyError(source)

    return read


def option(
    default: Any,
    help: str = "",
    *,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    flag: str | None = None,
    section: str = "run",
    metavar: str | None = None,
) -> Any:
    """A :class:`RunConfig` field and the command-line option that sets it.

    ``flag``: ``"store_true"`` for an on/off switch that defaults off, or the
    name of a ``--no-...`` switch for one that defaults on. ``section`` is a key
    of :data:`SECTIONS` (the heading of the option in ``--help`` and docs/cli.md);
    the ``"data"`` options are the ones ``rrr.evaluate`` shares.
    """
    meta = {
        "help": help,
        "type": type,
        "choices": choices,
        "flag": flag,
        "section": section,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta)


def explainer_loss_options(text: str) -> dict[str, float | str]:
    """``"entropy=3,area=0.8"`` as ``ExplainerLoss`` keyword overrides, validated.

    Raises:
        ConfigError: a malformed entry, an unknown key or a value the loss refuses.
    """
    from heatmaps.explainer import ExplainerLossConfig

    # "pixel" is --seg-weight on the command line
    known = [f.name for f in dataclasses.fields(ExplainerLossConfig) if f.name != "pixel"]
    options: dict[str, float | str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = entry.partition("=")
        if not sep or key not in known:
            raise ConfigError(
                f"--explainer-loss {text}: {entry!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(known)}"
            )
        if key == "classification_mode":
            options[key] = value
            continue
        try:
            options[key] = float(value)
        except ValueError:
            raise ConfigError(f"--explainer-loss {text}: {key}={value} is not a number") from None
    try:
        ExplainerLossConfig(**options)  # type: ignore[arg-type]
    except ValueError as error:
        raise ConfigError(f"--explainer-loss {text}: {error}") from None
    return options


@dataclass(frozen=True)
class RunConfig:
    """Every option of a fine-tuning run (see ``python -m rrr.finetune --help``)."""

    # -- model --------------------------------------------------------------------------------
    arch: str = option(
        "resnet18",
        "torchvision classification architecture (any name in "
        "torchvision.models.list_models(module=torchvision.models) that the backend supports)",
        metavar="ARCH",
        section="model",
    )
    model: str = option(
        "heatmap",
        "segmenter: the classifier's heatmaps, its Explainer masks (same as --method explainer), "
        "or a U-Net baseline on the same data",
        choices=_choices("model"),
        section="model",
    )
    method: str = option(
        "lrp",
        "heatmap backend, any name in heatmaps.available(); explainer trains an Explainer "
        "against the frozen classifier instead",
        metavar="METHOD",
        section="model",
    )
    explainer: str = option(
        "deeplabv3_resnet50",
        "Explainer network (with --method explainer): deeplabv3_resnet50 (the paper's), "
        "lraspp_mobilenet_v3_large, fcn_resnet50, deeplabv3_resnet101, "
        "deeplabv3_mobilenet_v3_large, small, or unet (a U-Net whose encoder is the --arch "
        "classifier, initialised from its pre-trained weights)",
        metavar="ARCH",
        section="model",
    )
    explainer_loss: str = option(
        "",
        "with --method explainer: weights of the Explainer's loss as KEY=VALUE,... over the "
        "paper's defaults, e.g. entropy=3,area=0.8,present_sparsity=0.01 (the authors' VOC "
        "configuration); keys: the fields of heatmaps.explainer.ExplainerLossConfig",
        metavar="K=V,...",
        section="model",
    )
    composite: str = option(
        "epsilon",
        "LRP composite (with --method lrp): epsilon, epsilon_plus, epsilon_plus_flat, "
        "epsilon_gamma_box, epsilon_alpha2_beta1, epsilon_alpha2_beta1_flat",
        metavar="NAME",
        section="model",
    )
    epsilon: float = option(
        0.1, "epsilon of the 'epsilon' composite", type=float, metavar="EPS", section="model"
    )
    relevance: str = option(
        "logit",
        "LRP output relevance (with --method lrp): y_c e_c, the class logit (well conditioned "
        "for training), or zennit's one-hot e_c (heatmaps.LRPHeatmap's default)",
        choices=("logit", "one_hot"),
        section="model",
    )
    weights: str = option(
        "none",
        "none (random initialisation), DEFAULT (torchvision's pretrained weights; downloads) "
        "or a local state-dict PATH; the head is replaced for the data set's classes",
        metavar="{none,DEFAULT,PATH}",
        section="model",
    )
    init_from: str | None = option(
        None,
        "start from the weights of another run's checkpoint.pt (every parameter whose name "
        "and shape match; the backbone must be covered), e.g. one pre-trained classifier "
        "shared by several methods, with --pretrain-epochs 0",
        metavar="PATH",
        section="model",
    )
    # -- segmentation logits ------------------------------------------------------------------
    loss: str = option(
        "ce", "segmentation loss on the heatmaps", choices=_choices("loss"), section="loss"
    )
    cls_weight: float | None = option(
        None,
        "weight of the multi-label classification loss (default: 10 for the heatmap "
        "segmenter, the recipe of docs/results.md; 1 for the multi-task U-Net)",
        type=non_negative_float,
        metavar="W",
        section="loss",
    )
    seg_weight: float = option(
        1.0,
        "weight of the loss on the heatmaps",
        type=non_negative_float,
        metavar="W",
        section="loss",
    )
    background: str = option(
        "constant",
        "background channel: a learned constant logit, or the heatmap of an extra output neuron",
        choices=("constant", "neuron"),
        section="model",
    )
    normalise: str = option(
        "std",
        "per-image normalisation of the maps",
        choices=("std", "max", "none"),
        section="model",
    )
    smoothing: int = option(
        0,
        "box blur of the maps in pixels (0 = none)",
        type=non_negative_int,
        metavar="PX",
        section="model",
    )
    gating: str = option(
        "predicted",
        "at inference, gate off the classes the classifier predicts absent, or none",
        choices=("predicted", "none"),
        section="model",
    )
    presence: str = option(
        "finetuned",
        "which classifier decides class presence at inference: the one the heatmap stage "
        "trains, or a frozen copy of the pre-trained one (one more forward pass)",
        choices=("finetuned", "pretrained"),
        section="model",
    )
    threshold: float = option(
        0.0,
        "class-logit threshold of --gating predicted",
        type=float,
        metavar="LOGIT",
        section="model",
    )
    # -- data ---------------------------------------------------------------------------------
    data: str = option("fashion-scenes", "data set", choices=_choices("data"), section="data")
    data_root: str | None = option(
        None,
        "data directory (required for voc and folder; searched first for Fashion-MNIST)",
        metavar="DIR",
        section="data",
    )
    download: bool = option(
        False, "allow downloading the dataset", flag="store_true", section="data"
    )
    image_size: int = option(
        64, "image side in pixels", type=positive_int, metavar="PX", section="data"
    )
    train_images: int = option(
        3000, "training scenes (fashion-scenes)", type=positive_int, metavar="N", section="data"
    )
    val_images: int = option(
        300,
        "validation / test scenes (fashion-scenes)",
        type=positive_int,
        metavar="N",
        section="data",
    )
    objects: tuple[int, int] = option(
        (1, 3), "items per scene (fashion-scenes)", type=_pair, metavar="MIN,MAX", section="data"
    )
    scene_seed: int = option(
        0, "scene composition seed (fashion-scenes)", type=int, metavar="SEED", section="data"
    )
    pixel_labels: int | str = option(
        50,
        "training images that keep their pixel masks (a number, or all)",
        type=count_or_all,
        metavar="{N,all}",
        section="loss",
    )
    labelled_per_batch: int | None = option(
        None,
        "pixel-labelled images in every fine-tuning batch (default: half the batch)",
        type=non_negative_int,
        metavar="N",
        section="loss",
    )
    # -- schedule -----------------------------------------------------------------------------
    pretrain_epochs: int = option(
        2,
        "epochs of multi-label classification before fine-tuning",
        type=non_negative_int,
        metavar="N",
        section="loss",
    )
    epochs: int = option(
        2, "fine-tuning epochs", type=non_negative_int, metavar="N", section="loss"
    )
    steps_per_epoch: int = option(
        0, "cap on batches per epoch (0 = all)", type=non_negative_int, metavar="N", section="loss"
    )
    batch_size: int = option(
        16,
        "global batch size (divisible by the number of processes)",
        type=positive_int,
        metavar="N",
        section="loss",
    )
    lr: float = option(
        1e-4, "fine-tuning learning rate", type=positive_float, metavar="LR", section="loss"
    )
    pretrain_lr: float = option(
        1e-3, "pre-training learning rate", type=positive_float, metavar="LR", section="loss"
    )
    scalar_lr: float = option(
        1e-3,
        "learning rate of the segmenter's scale and background",
        type=positive_float,
        metavar="LR",
        section="loss",
    )
    optimizer: str = option(
        "adamw",
        "AdamW (as in the paper) or SGD with momentum 0.9",
        choices=("adamw", "sgd"),
        section="loss",
    )
    weight_decay: float = option(
        1e-4, "weight decay", type=non_negative_float, metavar="WD", section="loss"
    )
    freeze_bn: bool = option(
        True,
        "update BatchNorm running statistics in the heatmap stage too (frozen there by "
        "default; pre-training always updates them)",
        flag="--no-freeze-bn",
        section="model",
    )
    checkpoint_activations: bool = option(
        False,
        "recompute the encoder's activations in the backward pass instead of keeping "
        "them (less memory with gradcam, explainer and classification, one more forward "
        "pass; refused with --method lrp)",
        flag="store_true",
        section="run",
    )
    # -- run ----------------------------------------------------------------------------------
    device: str = option(
        "auto", "auto (CUDA if available), cpu, cuda or cuda:N", metavar="DEVICE", section="run"
    )
    seed: int = option(
        0,
        "seed of initialisation, pixel-label choice and batch order",
        type=int,
        metavar="SEED",
        section="run",
    )
    deterministic: bool = option(
        False, "torch deterministic algorithms", flag="store_true", section="run"
    )
    out: str = option("runs/latest", "output directory", metavar="DIR", section="run")
    resume: bool = option(
        False, "continue the run in --out from its checkpoint", flag="store_true", section="run"
    )
    checkpoint_every: int = option(
        50,
        "also checkpoint every N steps (0 = at epoch ends only)",
        type=non_negative_int,
        metavar="N",
        section="run",
    )
    workers: int = option(
        0, "data loader processes", type=non_negative_int, metavar="N", section="run"
    )
    overlays: int = option(
        4,
        "validation images drawn after every fine-tuning epoch",
        type=non_negative_int,
        metavar="N",
        section="run",
    )
    progress: bool = option(True, "no progress bars", flag="--no-progress", section="run")

    def __post_init__(self) -> None:
        # --method explainer and --model explainer name the same segmenter; store both alike
        if self.model == "heatmap" and self.method == "explainer":
            object.__setattr__(self, "model", "explainer")
        if self.model == "explainer":
            object.__setattr__(self, "method", "explainer")
        if isinstance(self.objects, list):
            object.__setattr__(self, "objects", tuple(self.objects))
        if self.explainer_loss:
            explainer_loss_options(self.explainer_loss)  # a ConfigError names a bad entry
        if self.model == "heatmap" and self.method == "lrp" and not self.freeze_bn:
            raise ConfigError(
                "--no-freeze-bn does not work with --method lrp: LRP merges each BatchNorm into "
                "its layer with the running statistics, so they would never be updated; drop "
                "--no-freeze-bn or use another --method"
            )
        if self.checkpoint_activations and self.model == "heatmap" and self.method == "lrp":
            raise ConfigError(
                "--checkpoint-activations does not support --method lrp: LRP attaches its rules "
                "only during the heatmap call, so the recomputation in the backward pass would "
                "run without them; use --method gradcam, or drop --checkpoint-activations"
            )

    #: options that must equal the interrupted run's for ``--resume``
    RESUME_MUST_MATCH = ("arch", "model", "method", "explainer", "data", "image_size", "pixel_labels", "seed")  # fmt: skip

    def check_resumes(self, saved: RunConfig) -> None:
        """Raise :class:`ConfigError` naming an option that differs from the run being resumed."""
        for key in self.RESUME_MUST_MATCH:
            if getattr(saved, key) != getattr(self, key):
                raise ConfigError(
                    f"--resume: --{key.replace('_', '-')} {getattr(self, key)} differs "
                    f"from the run in {self.out} ({getattr(saved, key)})"
                )

    # -- plain data ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, None, lists) for checkpoints and metrics.json."""
        return {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in dataclasses.fields(self)
            for value in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Rebuild a configuration from :meth:`to_dict` output or an older checkpoint's dict.

        Options missing from ``data`` (added after the checkpoint was written) take
        their defaults; keys that are not options raise :class:`ConfigError`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}: written by another version of rrr"
            )
        return cls(**dict(data))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        return cls.from_dict(vars(args))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (the configuration itself is frozen)."""
        return dataclasses.replace(self, **changes)

    @property
    def phases(self) -> tuple[str, ...]:
        """The stage of each epoch: ``pretrain_epochs`` times "pretrain", then "finetune"."""
        return ("pretrain",) * self.pretrain_epochs + ("finetune",) * self.epochs

    @classmethod
    def data_fields(cls) -> list[str]:
        """Names of the data options (``section="data"``), the ones ``rrr.evaluate`` shares."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata["section"] == "data"]

    def data_options(self, split: str) -> dict[str, Any]:
        """Keyword options of :func:`rrr.data.build_dataset` for ``split``."""
        return {
            "root": self.data_root,
            "size": self.image_size,
            "length": self.train_images if split == "train" else self.val_images,
            "objects": tuple(self.objects),
            "scene_seed": self.scene_seed,
            "download": self.download,
        }


# -- the parsers ---------------------------------------------------------------------------------
def _flag(f: dataclasses.Field) -> str:
    flag = f.metadata["flag"]
    if flag and flag.startswith("--"):
        return flag
    return "--" + f.name.replace("_", "-")


def _add(target: Any, f: dataclasses.Field, with_default: bool) -> None:
    meta = f.metadata
    flag = meta["flag"]
    if flag == "store_true":
        target.add_argument(_flag(f), action="store_true", help=meta["help"])
        return
    if flag:
        target.add_argument(_flag(f), dest=f.name, action="store_false", help=meta["help"])
        return
    choices = meta["choices"]
    if callable(choices):
        choices = choices()
    kwargs: dict[str, Any] = {
        "default": f.default if with_default else None,
        "help": meta["help"],
    }
    if meta["type"] is not None:
        kwargs["type"] = meta["type"]
    if choices is not None:
        kwargs["choices"] = list(choices)
    if meta["metavar"] is not None:
        kwargs["metavar"] = meta["metavar"]
    target.add_argument(_flag(f), **kwargs)


def add_data_options(parser: argparse.ArgumentParser, with_defaults: bool = True) -> None:
    """The data options; without defaults (``rrr.evaluate``) an unset option means "as in the run"."""
    group = parser.add_argument_group(SECTIONS["data"])
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in RunConfig.data_fields():
        _add(group, fields[name], with_defaults)


def finetune_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m rrr.finetune``, generated from :class:`RunConfig`."""
    parser = OneLineParser(
        prog="python -m rrr.finetune",
        description="Fine-tune a torchvision classifier into a semantic segmenter from image-level "
        "labels plus a few pixel-labelled images, or train a U-Net baseline on the same data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {key: parser.add_argument_group(title) for key, title in SECTIONS.items()}
    for f in dataclasses.fields(RunConfig):
        _add(groups[f.metadata["section"]], f, True)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse ``rrr.finetune`` arguments into a :class:`RunConfig` (``argv=None``: ``sys.argv``)."""
    return RunConfig.from_args(finetune_parser().parse_args(argv))
