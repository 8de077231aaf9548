"""The Explainer backend (Stalder et al., NeurIPS 2022): masks, losses, training, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import SmallResNet, assert_unchanged, snapshot
from torch import nn

import heatmaps
import heatmaps.explainer.training
import heatmaps.labels
from heatmaps.explainer import (
    ExplainerHeatmap,
    ExplainerLoss,
    ExplainerLossConfig,
    aggregate_masks,
    area_loss,
    build_explainer,
    check_frozen,
    classification_loss,
    entropy_loss,
    explainer_step,
    freeze_classifier,
    segmentation_logits,
    sparsity_loss,
    total_variation,
)

C = 4


def make_classifier(num_classes: int = C) -> nn.Module:
    torch.manual_seed(0)
    return freeze_classifier(SmallResNet(num_classes=num_classes).double())


def make_explainer(num_classes: int = C) -> nn.Module:
    torch.manual_seed(1)
    return build_explainer("small", num_classes, width=4).double()


class CountingExplainer(nn.Module):
    """Counts its forward passes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- the heatmap backend


def test_masks_shape_range_and_one_forward_for_all_classes(images):
    explainer = CountingExplainer(make_explainer())
    hm = ExplainerHeatmap(make_classifier(), explainer)
    out = hm.explain(images, "all")
    assert explainer.calls == 1
    assert out.maps.shape == (3, C, 12, 10)
    assert out.logits.shape == (3, C)
    assert float(out.maps.min()) >= 0.0 and float(out.maps.max()) <= 1.0
    assert torch.allclose(out.maps, hm.masks(images))
    assert explainer.calls == 2


@pytest.mark.parametrize(
    "targets",
    ["all", None, 2, "per_sample", "pairs", "multi_hot"],
)
def test_targets_forms_select_mask_channels(images, targets):
    explainer = CountingExplainer(make_explainer())
    classifier = make_classifier()
    hm = ExplainerHeatmap(classifier, explainer)
    masks = hm.masks(images)
    explainer.calls = 0
    if targets == "per_sample":
        targets = torch.tensor([0, 3, 1])
    elif targets == "pairs":
        targets = torch.tensor([[0, 1], [3, 3], [2, 0]])
    elif targets == "multi_hot":
        targets = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = hm.explain(images, targets)
    assert explainer.calls <= 1
    expected = masks.gather(1, out.targets[:, :, None, None].expand(-1, -1, 12, 10))
    expected = expected * out.active[:, :, None, None]
    assert out.maps.shape == (3, out.targets.shape[1], 12, 10)
    assert torch.allclose(out.maps, expected)
    if targets is None:
        assert torch.equal(out.targets[:, 0], classifier(images).argmax(1))


def test_create_graph_gives_gradients_for_the_explainer_only(images):
    classifier, explainer = make_classifier(), make_explainer()
    hm = heatmaps.get("explainer", classifier, explainer=explainer)
    maps = hm(images, "all", create_graph=True)
    maps.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in explainer.parameters())
    assert all(p.grad is None for p in classifier.parameters())
    assert not hm(images, "all").requires_grad


def test_heatmap_call_changes_neither_network(images):
    torch.manual_seed(0)
    classifier = SmallResNet(num_classes=C).double().train()  # train mode, trainable: untouched
    explainer = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, C, 1)
    ).double()
    before = snapshot(classifier), snapshot(explainer)
    hm = ExplainerHeatmap(classifier, explainer)
    hm(images, "all")
    hm(images, torch.tensor([1, 2, 0]), create_graph=True)
    hm.masks(images)
    assert_unchanged(before[0], snapshot(classifier))
    assert_unchanged(before[1], snapshot(explainer))


def test_wrong_explainer_output_raises(images):
    hm = ExplainerHeatmap(make_classifier(), make_explainer(num_classes=C + 1))
    with pytest.raises(ValueError, match="5 class masks but the classifier has 4"):
        hm(images, "all")
    with pytest.raises(TypeError, match="explainer"):
        ExplainerHeatmap(make_classifier(), explainer="small")  # type: ignore[arg-type]


def test_registry():
    assert "explainer" in heatmaps.available()
    classifier, explainer = make_classifier(), make_explainer()
    hm = heatmaps.get("explainer", classifier, explainer=explainer)
    assert isinstance(hm, heatmaps.ExplainerHeatmap)
    assert hm.model is classifier and hm.classifier is classifier and hm.explainer is explainer


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    "arch", ["small", "lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"]
)
def test_build_explainer_outputs_logits_at_input_resolution(arch):
    net = build_explainer(arch, num_classes=3).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 33, 40))
    assert out.shape == (2, 3, 33, 40)


def test_build_explainer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch 'nope'"):
        build_explainer("nope", 3)
    with pytest.raises(ValueError, match="no pretrained backbone"):
        build_explainer("small", 3, backbone_weights="DEFAULT")
    with pytest.raises(ValueError, match="num_classes"):
        build_explainer("small", 0)


def test_default_backbone_weights_load_from_the_local_hub_cache(tmp_path):
    """``backbone_weights="DEFAULT"`` goes to torchvision; served here from a local file."""
    weights = torchvision.models.MobileNet_V3_Large_Weights.verify("DEFAULT")
    torch.manual_seed(5)
    reference = torchvision.models.mobilenet_v3_large()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save(reference.state_dict(), checkpoints / weights.url.rsplit("/", 1)[1])
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        net = build_explainer("lraspp_mobilenet_v3_large", 3, backbone_weights="DEFAULT")
    finally:
        torch.hub.set_dir(old)
    first = net.model.backbone["0"][0].weight
    assert torch.equal(first, reference.features[0][0].weight)


# --------------------------------------------------------------------------- textbook losses


def tb_classification(logits, labels):
    b, c = logits.shape
    total = 0.0
    for i in range(b):
        for j in range(c):
            p = 1.0 / (1.0 + math.exp(-float(logits[i, j])))
            y = float(labels[i, j])
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / (b * c)


def tb_entropy(logits):
    b, c = logits.shape
    total = 0.0
    for i in range(b):
        exps = [math.exp(float(v)) for v in logits[i]]
        z = sum(exps)
        for e in exps:
            p = e / z
            total += p * math.log(p)  # -(-p log p)
    return total / (b * c)


def tb_tv(mask):  # (B, H, W), reflected border: the neighbour of index W-1 is W-2
    b, h, w = mask.shape
    total = 0.0
    for i in range(b):
        for r in range(h):
            for s in range(w):
                right = s + 1 if s + 1 < w else w - 2
                down = r + 1 if r + 1 < h else h - 2
                total += abs(float(mask[i, r, s]) - float(mask[i, r, right]))
                total += abs(float(mask[i, r, s]) - float(mask[i, down, s]))
    return total / (b * h * w)


def tb_area(masks, present, min_area, max_area):
    b, c, h, w = masks.shape
    n = h * w
    total = 0.0
    for i in range(b):
        for j in range(c):
            if not present[i, j]:
                continue
            values = sorted((float(v) for v in masks[i, j].flatten()), reverse=True)
            acc = 0.0
            for k, v in enumerate(values):
                r_min = 1.0 if k < math.floor(n * min_area) else 0.0
                r_max = 1.0 if k < math.floor(n * max_area) else 0.0
                acc += max(r_min - v, 0.0) + max(v - r_max, 0.0)
            total += acc / n
    return total / b


def tb_union(masks, present, want):
    b, c, h, w = masks.shape
    out = torch.zeros(b, h, w, dtype=masks.dtype)
    for i in range(b):
        for r in range(h):
            for s in range(w):
                vals = [float(masks[i, j, r, s]) for j in range(c) if bool(present[i, j]) == want]
                out[i, r, s] = max(vals) if vals else 0.0
    return out


@pytest.fixture
def loss_inputs():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, C, 5, 6, dtype=torch.float64, generator=gen)
    present = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return logits.sigmoid(), present


def test_aggregate_masks_textbook(loss_inputs):
    masks, present = loss_inputs
    target, non_target = aggregate_masks(masks, present)
    assert torch.allclose(target, tb_union(masks, present, True))
    assert torch.allclose(non_target, tb_union(masks, present, False))
    assert torch.equal(target[1], torch.zeros(5, 6, dtype=torch.float64))


def test_shared_label_conventions_are_re_exported():
    assert classification_loss is heatmaps.labels.classification_loss
    assert heatmaps.explainer.training.IGNORE_INDEX == heatmaps.labels.IGNORE_INDEX == 255
    # a classifier with an extra (background) output is scored on its first C logits
    logits = torch.randn(3, 5, dtype=torch.float64)
    labels = (torch.rand(3, 4) > 0.5).double()
    assert torch.equal(
        classification_loss(logits, labels), classification_loss(logits[:, :4], labels)
    )


def test_classification_and_entropy_textbook():
    gen = torch.Generator().manual_seed(8)
    logits = 3 * torch.randn(4, 5, dtype=torch.float64, generator=gen)
    labels = (torch.rand(4, 5, generator=gen) > 0.5).double()
    assert math.isclose(
        float(classification_loss(logits, labels)), tb_classification(logits, labels), rel_tol=1e-12
    )
    assert math.isclose(float(entropy_loss(logits)), tb_entropy(logits), rel_tol=1e-12)
    uniform = torch.zeros(2, 5, dtype=torch.float64)
    assert math.isclose(float(entropy_loss(uniform)), -math.log(5) / 5, rel_tol=1e-12)


def test_total_variation_textbook(loss_inputs):
    masks, _ = loss_inputs
    mask = masks[:, 0]
    assert math.isclose(float(total_variation(mask)), tb_tv(mask), rel_tol=1e-12)
    # equals the released code's reflect-padded 3x3 difference filters
    right = torch.tensor([[0.0, 0, 0], [0, 1, -1], [0, 0, 0]], dtype=torch.float64)
    down = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float64)
    padded = F.pad(mask[:, None], (1, 1, 1, 1), mode="reflect")
    ref = (
        F.conv2d(padded, right[None, None]).abs() + F.conv2d(padded, down[None, None]).abs()
    ).mean()
    assert torch.allclose(total_variation(mask), ref)
    assert float(total_variation(torch.ones(2, 4, 4))) == 0.0


@pytest.mark.parametrize("bounds", [(0.05, 0.3), (0.2, 0.5), (0.0, 1.0)])
def test_area_loss_textbook(loss_inputs, bounds):
    masks, present = loss_inputs
    got = float(area_loss(masks, present, *bounds))
    assert math.isclose(got, tb_area(masks, present, *bounds), rel_tol=1e-12, abs_tol=1e-15)
    if bounds == (0.0, 1.0):
        assert got == 0.0
    with pytest.raises(ValueError, match="min_area <= max_area"):
        area_loss(masks, present, 0.5, 0.2)


def test_area_loss_is_zero_for_a_mask_within_bounds():
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    mask[0, 0, :2, :] = 1.0  # 20 % of the image: between 5 % and 30 %
    assert float(area_loss(mask, torch.ones(1, 1, dtype=torch.bool))) == 0.0


def test_sparsity_textbook(loss_inputs):
    masks, _ = loss_inputs
    flat = [float(v) for v in masks.flatten()]
    assert math.isclose(float(sparsity_loss(masks)), sum(flat) / len(flat), rel_tol=1e-12)


@pytest.mark.parametrize("mode", ["union", "per_class"])
def test_explainer_loss_combines_the_textbook_terms(images, mode):
    classifier = make_classifier()
    gen = torch.Generator().manual_seed(9)
    mask_logits = torch.randn(3, C, 12, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float64)
    present = labels.bool()
    loss = ExplainerLoss(classification_mode=mode, entropy=0.7)
    total, terms = loss(mask_logits, images, labels, classifier)

    masks = mask_logits.detach().sigmoid()
    m, n = tb_union(masks, present, True), tb_union(masks, present, False)
    with torch.no_grad():
        if mode == "union":
            cls = tb_classification(classifier(m[:, None] * images), labels)
        else:
            per_pair = []
            for i in range(3):
                for j in range(C):
                    if present[i, j]:
                        logit = classifier(masks[i, j][None, None] * images[i : i + 1])
                        onehot = F.one_hot(torch.tensor([j]), C).double()
                        per_pair.append(tb_classification(logit, onehot))
            cls = sum(per_pair) / len(per_pair)
        ent = tb_entropy(classifier((1 - m[:, None]) * images))
    expected = {
        "classification": cls,
        "entropy": ent,
        "tv": tb_tv(m) + tb_tv(n),
        "area": tb_area(masks, present, 0.05, 0.3),
        "present_sparsity": float(m.mean()),
        "absent_sparsity": float(n.mean()),
    }
    for key, value in expected.items():
        assert math.isclose(float(terms[key]), value, rel_tol=1e-10), key
    weights = {"classification": 1, "entropy": 0.7, "tv": 1, "area": 1}
    weights |= {"present_sparsity": 0.1, "absent_sparsity": 0.3}
    assert math.isclose(
        float(total.detach()), sum(weights[k] * expected[k] for k in expected), rel_tol=1e-10
    )
    total.backward()
    assert mask_logits.grad is not None and mask_logits.grad.abs().sum() > 0


def test_explainer_loss_config():
    cfg = ExplainerLoss().config
    assert (cfg.classification, cfg.entropy, cfg.tv, cfg.area) == (1.0, 1.0, 1.0, 1.0)
    assert (cfg.present_sparsity, cfg.absent_sparsity) == (0.1, 0.3)
    assert (cfg.min_area, cfg.max_area) == (0.05, 0.3)
    assert ExplainerLoss(ExplainerLossConfig(tv=2.0), area=0.5).config.tv == 2.0
    with pytest.raises(TypeError, match="unknown options"):
        ExplainerLoss(lambda_tv=1.0)
    with pytest.raises(ValueError, match="classification_mode"):
        ExplainerLossConfig(classification_mode="max")


# --------------------------------------------------------------------------- training


def test_freeze_check_raises_with_a_helpful_message(images):
    explainer = make_explainer()
    labels = torch.zeros(3, C, dtype=torch.float64)
    classifier = SmallResNet(num_classes=C).double()
    with pytest.raises(ValueError, match="freeze_classifier"):
        explainer_step(explainer, classifier.eval(), images, labels, ExplainerLoss())
    classifier.requires_grad_(False).train()
    with pytest.raises(ValueError, match="train mode"):
        explainer_step(explainer, classifier, images, labels, ExplainerLoss())
    check_frozen(freeze_classifier(classifier))
    assert not classifier.training
    assert not any(p.requires_grad for p in classifier.parameters())


def test_classifier_bitwise_unchanged_after_optimizer_steps(images):
    classifier, explainer = make_classifier(), make_explainer()
    before = snapshot(classifier)
    start = [p.detach().clone() for p in explainer.parameters()]
    optimizer = torch.optim.Adam(explainer.parameters(), lr=1e-2)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    for _ in range(3):
        explainer_step(explainer, classifier, images, labels, ExplainerLoss(), optimizer=optimizer)
    assert_unchanged(before, snapshot(classifier))
    assert any(not torch.equal(a, b) for a, b in zip(start, explainer.parameters()))


def test_segmentation_logits_background_channel():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen)
    seg = segmentation_logits(z)
    assert seg.shape == (2, 4, 4, 4)
    assert torch.allclose(seg[:, 1:], z)
    background_prob = 1 - z.sigmoid().amax(dim=1)
    assert torch.allclose(seg[:, 0].sigmoid(), background_prob)
    # argmax: background exactly where every mask is below 0.5
    assert torch.equal(seg.argmax(1) == 0, (z.sigmoid() < 0.5).all(dim=1))


def test_pixel_term_uses_only_labelled_samples(images):
    classifier, explainer = make_classifier(), make_explainer()
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)
    targets = torch.full((3, 12, 10), heatmaps.labels.IGNORE_INDEX, dtype=torch.long)
    targets[1, :6] = 0
    targets[1, 6:] = 2
    seen = []

    def pixel_loss(seg, target):
        seen.append((seg.shape, target.clone()))
        return F.cross_entropy(seg, target, ignore_index=heatmaps.labels.IGNORE_INDEX)

    loss = ExplainerLoss(pixel=2.0)
    total, terms = explainer_step(explainer, classifier, images, labels, loss, pixel_loss, targets)
    assert seen[0][0] == (1, C + 1, 12, 10) and torch.equal(seen[0][1], targets[1:2])
    with torch.no_grad():
        expected = F.cross_entropy(segmentation_logits(explainer(images[1:2])), targets[1:2])
        base, _ = loss(explainer(images), images, labels, classifier)
    assert torch.allclose(terms["pixel"], expected)
    assert torch.allclose(total, base + 2.0 * expected)
    # default loss (cross-entropy) and a batch without any labelled pixel
    _, terms = explainer_step(explainer, classifier, images, labels, loss, None, targets)
    assert torch.allclose(terms["pixel"], expected)
    unlabelled = torch.full_like(targets, heatmaps.labels.IGNORE_INDEX)
    total, terms = explainer_step(explainer, classifier, images, labels, loss, None, unlabelled)
    assert float(terms["pixel"]) == 0.0
    with pytest.raises(ValueError, match="pixel_targets"):
        explainer_step(explainer, classifier, images, labels, loss, pixel_loss, None)


class ColourClassifier(nn.Module):
    """A fixed classifier: class c is present when some pixel is bright in channel c."""

    def __init__(self) -> None:
        super().__init__()
        self.gap = nn.AdaptiveMaxPool2d(1)
        self.scale = nn.Parameter(torch.tensor(12.0))
        self.bias = nn.Parameter(torch.tensor(-6.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.gap(x).flatten(1) + self.bias


def colour_squares(
    batch: int, size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Black images with 1 or 2 squares of a pure colour (class = colour channel)."""
    x = torch.zeros(batch, 3, size, size)
    labels = torch.zeros(batch, 3)
    for i in range(batch):
        for _ in range(1 + int(torch.randint(2, (1,), generator=gen))):
            c = int(torch.randint(3, (1,), generator=gen))
            r, s = (int(v) for v in torch.randint(size - 5, (2,), generator=gen))
            x[i, c, r : r + 5, s : s + 5] = 1.0
            labels[i, c] = 1.0
    return x, labels


def test_short_training_run_lowers_the_total_loss():
    gen = torch.Generator().manual_seed(0)
    classifier = freeze_classifier(ColourClassifier())
    torch.manual_seed(0)
    explainer = build_explainer("small", 3, width=8)
    optimizer = torch.optim.Adam(explainer.parameters(), lr=3e-3)
    loss = ExplainerLoss()
    x_eval, y_eval = colour_squares(16, 20, gen)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(explainer(x_eval), x_eval, y_eval, classifier)[0])

    start = evaluate()
    for _ in range(30):
        x, y = colour_squares(8, 20, gen)
        explainer_step(explainer, classifier, x, y, loss, optimizer=optimizer)
    end = evaluate()
    assert end < 0.8 * start, (start, end)


# ----------------------------------------------------------------- ClassifierUNet


def test_classifier_unet_starts_from_the_classifier_once():
    from heatmaps.explainer import ClassifierUNet
    from rrr.segmenters import ExplainerSegmenter

    torch.manual_seed(0)
    classifier = torchvision.models.resnet18(num_classes=4)
    unet = build_explainer("unet", 4, encoder_name="resnet18")
    assert isinstance(unet, ClassifierUNet) and not bool(unet.initialised)
    assert not torch.equal(unet.net.encoder.conv1.weight, classifier.conv1.weight)
    segmenter = ExplainerSegmenter(classifier, unet, 4)
    segmenter.freeze_classifier()
    for name, value in unet.net.encoder.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[name]), name
    assert bool(unet.initialised) and "explainer.initialised" in segmenter.state_dict()
    # a second freeze (every step, and after a resume) must not copy over a trained encoder
    with torch.no_grad():
        unet.net.encoder.conv1.weight.add_(1.0)
    segmenter.freeze_classifier()
    assert not torch.equal(unet.net.encoder.conv1.weight, classifier.conv1.weight)
    assert unet(torch.rand(1, 3, 32, 64)).shape == (1, 4, 32, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        unet(torch.rand(1, 3, 40, 64))


def test_classifier_unet_refuses_another_architecture():
    unet = build_explainer("unet", 4, encoder_name="resnet34")
    with pytest.raises(ValueError, match="encoder entries"):
        unet.initialise_from(torchvision.models.resnet18(num_classes=4))
    with pytest.raises(ValueError, match="classifier's weights"):
        build_explainer("unet", 4, backbone_weights="DEFAULT")


def test_explainer_loss_option_overrides_the_papers_weights():
    from rrr.config import ConfigError, RunConfig
    from rrr.segmenters import ExplainerSegmenter

    config = RunConfig(
        model="explainer",
        explainer="small",
        explainer_loss="entropy=3,area=0.8,present_sparsity=0.01",
    )
    loss = ExplainerSegmenter.from_config(config, 4).loss.config
    assert (loss.entropy, loss.area, loss.present_sparsity) == (3.0, 0.8, 0.01)
    assert (loss.classification, loss.absent_sparsity) == (1.0, 0.3)  # the paper's, untouched
    with pytest.raises(ConfigError, match="pixel"):
        RunConfig(model="explainer", explainer_loss="pixel=2")  # that is --seg-weight
