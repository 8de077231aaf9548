"""The typed run configuration: one declaration drives the parser, checkpoints and defaults."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from rrr.config import ConfigError, RunConfig, finetune_parser, parse_config

# the configuration dict of a checkpoint written before RunConfig existed (rrr at 17863a3):
# no "relevance" option yet, objects as a list
OLD_CONFIG = {
    "arch": "resnet18", "model": "heatmap", "method": "lrp", "explainer": "deeplabv3_resnet50",
    "composite": "epsilon", "epsilon": 0.1, "loss": "ce", "cls_weight": 1.0, "seg_weight": 1.0,
    "weights": "none", "background": "constant", "normalise": "std", "smoothing": 0,
    "gating": "predicted", "threshold": 0.0, "data": "fashion-scenes", "data_root": None,
    "download": False, "image_size": 64, "train_images": 2000, "val_images": 200,
    "objects": [1, 3], "scene_seed": 0, "pixel_labels": 50, "labelled_per_batch": None,
    "pretrain_epochs": 4, "epochs": 1, "steps_per_epoch": 125, "batch_size": 16, "lr": 1e-4,
    "pretrain_lr": 1e-3, "scalar_lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4,
    "freeze_bn": True, "checkpoint_activations": False, "device": "auto", "seed": 0,
    "deterministic": False, "out": "runs/demo", "resume": False, "checkpoint_every": 50,
    "workers": 0, "overlays": 4, "progress": True,
}  # fmt: skip


def test_parser_defaults_are_the_dataclass_defaults():
    assert parse_config([]) == RunConfig()


def test_every_field_is_an_option_and_back():
    parser = finetune_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(RunConfig)}


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().lr = 1.0  # type: ignore[misc]


def test_round_trip_through_a_weights_only_checkpoint():
    config = parse_config(
        ["--objects", "2,4", "--lr", "3e-4", "--method", "gradcam", "--no-freeze-bn", "--seed", "7"]
    )
    buffer = io.BytesIO()
    torch.save({"config": config.to_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["config"]
    assert loaded["objects"] == [2, 4]
    assert RunConfig.from_dict(loaded) == config
    assert RunConfig.from_dict(loaded).objects == (2, 4)


def test_an_old_checkpoint_config_loads_with_the_old_behaviour():
    config = RunConfig.from_dict(OLD_CONFIG)
    assert config.relevance == "logit"  # what the old code used when the key was missing
    assert config.epsilon == 0.1 and config.objects == (1, 3)


def test_unknown_keys_say_which_and_why():
    with pytest.raises(ConfigError, match="frobnicate.*another version"):
        RunConfig.from_dict({**OLD_CONFIG, "frobnicate": 1})


def test_method_explainer_and_model_explainer_are_one_segmenter():
    a = parse_config(["--method", "explainer"])
    b = parse_config(["--model", "explainer"])
    assert a == b and a.model == "explainer" and a.method == "explainer"
    # and an old explainer checkpoint's config reads the same
    old = RunConfig.from_dict({**OLD_CONFIG, "method": "explainer"})
    assert old.model == "explainer"


def test_lrp_with_activation_checkpointing_is_refused_at_construction():
    with pytest.raises(ConfigError, match="--checkpoint-activations.*--method lrp"):
        RunConfig(method="lrp", checkpoint_activations=True)
    RunConfig(method="gradcam", checkpoint_activations=True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], "positive"),
        (["--lr", "-1"], "positive"),
        (["--epochs", "-1"], ">= 0"),
        (["--objects", "3,1"], "MIN <= MAX"),
        (["--relevance", "softmax"], "invalid choice"),
        (["--data", "nope"], "invalid choice"),
        (["--model", "nope"], "invalid choice"),
    ],
)
def test_bad_values_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_relevance_reaches_the_lrp_backend():
    from rrr.segmenters import build_segmenter

    for relevance in ("logit", "one_hot"):
        config = parse_config(["--relevance", relevance])
        assert build_segmenter(config, 3).backend.relevance == relevance
