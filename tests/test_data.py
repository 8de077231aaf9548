"""Tests of rrr.data: Fashion-MNIST scenes, VOC, image folders, semi-supervised sampling.

The factory tests at the end also show the data set registry: a data set is a
``SegmentationDataset`` subclass with ``name`` and ``from_options``, and
defining it is all ``build_dataset`` and ``dataset_names`` need.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import rrr.data
import rrr.data.common
import rrr.data.fashion_mnist as fmnist
from heatmaps import labels as heatmap_labels
from rrr.data import (
    DATASETS,
    IGNORE_INDEX,
    DatasetError,
    FashionScenes,
    MixedBatchSampler,
    PixelLabelSubset,
    SegmentationDataset,
    SegmentationFolder,
    VOCSegmentationDataset,
    build_dataset,
    choose_pixel_labelled,
    dataset_class,
    dataset_labels,
    dataset_names,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
    unregister_dataset,
)
from rrr.data.common import read_image_labels
from rrr.data.voc import read_image_label_file

HAVE_DEBIAN = all(
    (fmnist.DEBIAN_DIR / name).is_file()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
)

# ---------------------------------------------------------------------------
# fixtures


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as an idx file (gzipped when ``compress``)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def synthetic_fashion(directory: Path, n_train: int = 120, n_test: int = 30) -> Path:
    """Tiny Fashion-MNIST stand-in: random bright rectangles, labels i % 10."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for i in range(count):
            top, left = rng.integers(0, 10, size=2)
            height, width = rng.integers(8, 18, size=2)
            images[i, top : top + height, left : left + width] = rng.integers(60, 256)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_fashion(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module", params=["synthetic", "debian"])
def scene_root(request: pytest.FixtureRequest, synthetic_root: Path) -> Path | None:
    """Scenes on the synthetic stand-in and on the real (Debian) Fashion-MNIST."""
    if request.param == "debian":
        if not HAVE_DEBIAN:
            pytest.skip(
                f"real Fashion-MNIST not installed at {fmnist.DEBIAN_DIR} "
                "(apt-get install dataset-fashion-mnist)"
            )
        return None
    return synthetic_root


def voc_palette() -> list[int]:
    palette = []
    for k in range(256):
        palette += [(k * 37) % 256, (k * 91) % 256, (k * 53) % 256]
    return palette


def save_index_png(path: Path, mask: np.ndarray, palette: bool = True) -> None:
    img = Image.fromarray(mask.astype(np.uint8))
    if palette:
        img.putpalette(voc_palette())
    img.save(path)


def make_voc(root: Path) -> Path:
    """Three tiny images in torchvision's VOC layout, masks with 255 boundaries."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    specs = {"2007_000001": (15,), "2007_000002": (1, 12), "2007_000003": (20,), "2008_000004": ()}
    for image_id, classes in specs.items():
        image = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((24, 32), dtype=np.uint8)
        for j, cls in enumerate(classes):
            mask[4:20, 2 + 14 * j : 14 + 14 * j] = cls
            mask[2:4, 2 + 14 * j : 14 + 14 * j] = IGNORE_INDEX  # boundary
        save_index_png(base / "SegmentationClass" / f"{image_id}.png", mask)
    seg = base / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("2007_000001\n2007_000002\n")
    (seg / "val.txt").write_text("2007_000003\n")
    return root


def make_folder(root: Path) -> Path:
    """Image folder: 3 images with masks (classes 1, 2), one with labels.csv only."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    rng = np.random.default_rng(2)
    for stem, cls in (("a", 1), ("b", 2), ("c", 1)):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.png"
        )
        mask = np.zeros((16, 20), dtype=np.uint8)
        mask[2:10, 3:12] = cls
        mask[0, :] = IGNORE_INDEX
        save_index_png(root / "masks" / f"{stem}.png", mask, palette=stem == "a")
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(
        root / "images" / "d.jpg"
    )
    (root / "labels.csv").write_text("d,1;2\n")
    (root / "splits" / "train.txt").write_text("a\nb\nd\n")
    (root / "splits" / "val.txt").write_text("c\n")
    return root


# ---------------------------------------------------------------------------
# idx reader and Fashion-MNIST discovery


def test_read_idx_gz_and_plain(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}.idx", array, compress=compress)
        out = read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic_and_size(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DatasetError, match="bad-magic-idx3-ubyte"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02"))
    with pytest.raises(DatasetError, match="short-idx1-ubyte.gz"):
        read_idx(short)


def test_find_torchvision_layout_and_missing(tmp_path: Path, monkeypatch) -> None:
    synthetic_fashion(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=12)
    images, labels = load_fashion_mnist("test", root=tmp_path)
    assert images.dtype == torch.uint8 and images.shape == (12, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (12,)
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fmnist, "CACHE_DIR", tmp_path / "nocache")
    with pytest.raises(DatasetError, match="nowhere") as info:
        find_fashion_mnist("train", root=tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)


@pytest.mark.skipif(not HAVE_DEBIAN, reason=f"Fashion-MNIST not installed at {fmnist.DEBIAN_DIR}")
def test_real_fashion_mnist() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert load_fashion_mnist("train")[0] is images  # cached in-process
    test_images, _ = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)


# ---------------------------------------------------------------------------
# Fashion-MNIST scenes


def test_scene_item_format(scene_root: Path | None) -> None:
    ds = FashionScenes("train", size=48, length=8, root=scene_root)
    assert ds.classes[0] == "background" and len(ds.classes) == 11 and ds.num_classes == 10
    item = ds[3]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (48, 48) and item["mask"].dtype == torch.int64
    assert item["labels"].shape == (10,) and item["labels"].dtype == torch.float32
    assert item["has_mask"].dtype == torch.bool and item["has_mask"].item()
    assert item["index"] == 3
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert torch.equal(item["image"][0], item["image"][1])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["has_mask"].shape == (4,)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_scene_determinism(scene_root: Path | None) -> None:
    ds = FashionScenes("train", length=20, seed=3, root=scene_root)
    forward = [ds[i] for i in range(20)]
    backward = [ds[i] for i in reversed(range(20))][::-1]
    again = FashionScenes("train", length=20, seed=3, root=scene_root)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets
    for i in range(20):
        for other in (backward[i], again[i], clone[i]):
            assert torch.equal(forward[i]["image"], other["image"])
            assert torch.equal(forward[i]["mask"], other["mask"])
    other_seed = FashionScenes("train", length=20, seed=4, root=scene_root)
    assert any(not torch.equal(forward[i]["mask"], other_seed[i]["mask"]) for i in range(20))
    longer = FashionScenes("train", length=40, seed=3, root=scene_root)
    assert torch.equal(longer[5]["image"], forward[5]["image"])  # item i independent of length


def test_scene_masks_exact(scene_root: Path | None) -> None:
    ds = FashionScenes("val", size=64, length=30, objects=(1, 4), root=scene_root)
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"][0], item["mask"]
        assert (image[mask > 0] > ds.threshold).all()
        assert (image[mask == 0] == 0).all()
        present = torch.unique(mask)
        present = present[present > 0]
        assert torch.equal(torch.nonzero(item["labels"]).flatten() + 1, present)
        objects = ds.objects(i)
        assert 1 <= len(objects) <= 4
        assert [o.order for o in objects] == list(range(len(objects)))
        assert set(present.tolist()) <= {o.class_index for o in objects}
        # the last-drawn item is never occluded: all its foreground pixels carry its class
        top = objects[-1]
        window = mask[top.top : top.top + top.height, top.left : top.left + top.width]
        assert (window == top.class_index).any()
        for o in objects:
            assert 0 <= o.top <= 64 - o.height and 0 <= o.left <= 64 - o.width


def test_scene_pools_disjoint(scene_root: Path | None) -> None:
    pools = {}
    for split in ("train", "val", "test"):
        ds = FashionScenes(split, length=60, root=scene_root)
        objects = [o for i in range(len(ds)) for o in ds.objects(i)]
        pools[split] = {(o.source_split, o.source_index) for o in objects}
        assert {o.source_split for o in objects} == {"test" if split == "test" else "train"}
    n_train = len(load_fashion_mnist("train", root=scene_root)[0])
    n_val = min(10_000, n_train // 6)
    assert all(i < n_train - n_val for _, i in pools["train"])
    assert all(i >= n_train - n_val for _, i in pools["val"])
    assert not pools["train"] & pools["val"] and not pools["val"] & pools["test"]


def test_scene_speed(synthetic_root: Path) -> None:
    ds = FashionScenes("train", size=64, length=200, root=synthetic_root)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    per_scene = (time.perf_counter() - start) / len(ds)
    assert per_scene < 0.01, f"{per_scene * 1e3:.2f} ms per 64 px scene"


# ---------------------------------------------------------------------------
# PASCAL VOC layout


def test_voc_loads(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    train = VOCSegmentationDataset(root, "train", size=16)
    assert len(train) == 2 and train.num_classes == 20 and len(train.classes) == 21
    item = train[1]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    assert item["has_mask"].item()
    assert torch.nonzero(item["labels"]).flatten().tolist() == [0, 11]
    assert (item["mask"] == IGNORE_INDEX).any()  # 255 survives resizing
    assert set(torch.unique(item["mask"]).tolist()) <= {0, 1, 12, IGNORE_INDEX}
    assert torch.equal(dataset_labels(train), torch.stack([train[i]["labels"] for i in range(2)]))
    val = VOCSegmentationDataset(root, "val", size=None)
    assert val[0]["mask"].shape == (24, 32) and val[0]["labels"][19] == 1
    assert set(torch.unique(val[0]["mask"]).tolist()) == {0, 20, IGNORE_INDEX}


def test_voc_extra_image_labels(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    extra = tmp_path / "extra.txt"
    extra.write_text("2008_000004 3,7\n2007_000001 15\n")
    ds = VOCSegmentationDataset(root, "train", size=16, extra_image_labels=extra)
    assert len(ds) == 3 and ds.pixel_labelled == [0, 1]
    item = ds[2]
    assert not item["has_mask"].item() and (item["mask"] == IGNORE_INDEX).all()
    assert torch.nonzero(item["labels"]).flatten().tolist() == [2, 6]
    extra.write_text("2008_000004 21\n")
    with pytest.raises(DatasetError, match="extra.txt"):
        VOCSegmentationDataset(root, "train", extra_image_labels=extra)


def test_voc_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="VOCdevkit"):
        VOCSegmentationDataset(tmp_path / "none", "train")
    root = make_voc(tmp_path)
    (root / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png").unlink()
    with pytest.raises(DatasetError, match="2007_000003.png"):
        VOCSegmentationDataset(root, "val")


# ---------------------------------------------------------------------------
# image folder


def test_folder_good(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    ds = SegmentationFolder(root, split="train")
    assert ds.classes == ["background", "cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 3 and ds.pixel_labelled == [0, 1]
    a, b, d = ds[0], ds[1], ds[2]
    assert a["image"].shape == (3, 16, 20) and a["mask"].shape == (16, 20)
    assert a["labels"].tolist() == [1.0, 0.0] and b["labels"].tolist() == [0.0, 1.0]
    assert (a["mask"][0] == IGNORE_INDEX).all() and a["has_mask"].item()
    assert not d["has_mask"].item() and (d["mask"] == IGNORE_INDEX).all()
    assert d["labels"].tolist() == [1.0, 1.0]
    assert len(SegmentationFolder(root)) == 4
    sized = SegmentationFolder(root, split="val", size=8)
    assert sized[0]["image"].shape == (3, 8, 8) and sized[0]["mask"].shape == (8, 8)
    batch = next(iter(DataLoader(SegmentationFolder(root, size=8), batch_size=4)))
    assert batch["has_mask"].tolist() == [True, True, True, False]


def test_folder_mask_size_mismatch(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    save_index_png(root / "masks" / "b.png", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DatasetError, match="b.png") as info:
        SegmentationFolder(root)[1]
    assert "size" in str(info.value)


def test_folder_unknown_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[5, 5] = 7
    save_index_png(root / "masks" / "c.png", mask)
    with pytest.raises(DatasetError, match="c.png") as info:
        SegmentationFolder(root)[2]
    assert "7" in str(info.value)


def test_folder_corrupt_png(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "masks" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = SegmentationFolder(root)
    with pytest.raises(DatasetError, match="a.png"):
        ds[0]
    (root / "images" / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="b.png"):
        ds[1]


def test_folder_rgb_mask_rejected(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    Image.new("RGB", (20, 16)).save(root / "masks" / "a.png")
    with pytest.raises(DatasetError, match="a.png"):
        SegmentationFolder(root)[0]


def test_folder_layout_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        SegmentationFolder(root)
    root = make_folder(tmp_path / "data2")
    (root / "labels.csv").unlink()
    with pytest.raises(DatasetError, match="d.jpg"):
        SegmentationFolder(root)
    root = make_folder(tmp_path / "data3")
    (root / "splits" / "test.txt").write_text("\n")
    with pytest.raises(DatasetError, match="test.txt"):
        SegmentationFolder(root, split="test")
    with pytest.raises(DatasetError, match="nosplit.txt"):
        SegmentationFolder(root, split="nosplit")
    (root / "masks" / "zz.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="zz.png"):
        SegmentationFolder(root)


# ---------------------------------------------------------------------------
# semi-supervised selection and sampling


def test_choose_pixel_labelled_covers_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(200, 6, generator=gen) < 0.25).float()
    labels[:, 5] = 0
    labels[137, 5] = 1  # one rare sample
    chosen = choose_pixel_labelled(labels, 6, seed=1)
    assert len(chosen) == len(set(chosen)) == 6
    assert (labels[chosen].sum(0) > 0).all()
    assert 137 in chosen
    assert chosen == choose_pixel_labelled(labels, 6, seed=1)
    assert choose_pixel_labelled(labels, 20, seed=1)[:6] == chosen  # nested
    assert choose_pixel_labelled(labels, 20, seed=2) != choose_pixel_labelled(labels, 20, seed=1)
    everything = choose_pixel_labelled(labels, 200, seed=0)
    assert sorted(everything) == list(range(200))
    coverage = labels[choose_pixel_labelled(labels, 30, seed=0)].sum(0)[:5]
    assert coverage.min() >= 5  # balanced, not just covered
    with pytest.raises(ValueError, match="201"):
        choose_pixel_labelled(labels, 201, seed=0)


def test_pixel_label_subset(synthetic_root: Path) -> None:
    ds = FashionScenes("train", length=10, root=synthetic_root)
    subset = PixelLabelSubset(ds, [2, 7])
    assert subset.labelled_indices == [2, 7] and len(subset.unlabelled_indices) == 8
    assert subset.classes == ds.classes and subset.num_classes == 10
    kept, hidden = subset[2], subset[3]
    assert kept["has_mask"].item() and torch.equal(kept["mask"], ds[2]["mask"])
    assert not hidden["has_mask"].item() and (hidden["mask"] == IGNORE_INDEX).all()
    assert torch.equal(hidden["labels"], ds[3]["labels"])
    assert torch.equal(dataset_labels(subset), dataset_labels(ds))
    with pytest.raises(ValueError):
        PixelLabelSubset(ds, [10])


def test_mixed_batch_sampler_ratio_and_epochs() -> None:
    labelled, unlabelled = list(range(7)), list(range(100, 143))
    sampler = MixedBatchSampler(labelled, unlabelled, batch_size=10, seed=5)
    assert sampler.labelled_per_batch == 5 and len(sampler) == 43 // 5
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 10
        assert sum(i in labelled for i in batch) == 5
    seen = [i for b in batches for i in b if i >= 100]
    assert len(seen) == len(set(seen)) == 40  # one pass over unlabelled, dropping the rest
    assert list(sampler) == batches
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != batches
    again = MixedBatchSampler(labelled, unlabelled, batch_size=10, seed=5)
    again.set_epoch(1)
    assert list(again) == epoch1
    keep = MixedBatchSampler(labelled, unlabelled, batch_size=10, drop_last=False)
    assert len(keep) == 9 and len(list(keep)[-1]) == 5 + 3
    only = MixedBatchSampler(labelled, [], batch_size=3)
    assert [len(b) for b in only] == [3, 3]


def test_mixed_batch_sampler_shards() -> None:
    labelled, unlabelled = list(range(5)), list(range(50, 90))
    for per_batch in (5, 4):
        single = MixedBatchSampler(labelled, unlabelled, 10, per_batch, seed=9)
        single.set_epoch(2)
        shards = []
        for rank in range(2):
            sampler = MixedBatchSampler(
                labelled, unlabelled, 10, per_batch, 9, rank=rank, world_size=2
            )
            sampler.set_epoch(2)
            shards.append(list(sampler))
            assert len(sampler) == len(single)
        for batch, part0, part1 in zip(single, *shards):
            assert len(part0) == len(part1) == 5
            assert not set(part0) & set(part1)
            assert sorted(part0 + part1) == sorted(batch)
            n_lab = [sum(i < 5 for i in part) for part in (part0, part1)]
            assert sum(n_lab) == per_batch and abs(n_lab[0] - n_lab[1]) <= 1


# ---------------------------------------------------------------------------
# factory


def test_build_dataset(tmp_path: Path, synthetic_root: Path) -> None:
    options = {
        "root": synthetic_root,
        "size": 32,
        "length": 12,
        "objects": (2, 2),
        "scene_seed": 1,
        "download": False,
    }
    ds = build_dataset("fashion-scenes", "val", **options)
    assert isinstance(ds, FashionScenes) and len(ds) == 12 and ds[0]["image"].shape == (3, 32, 32)
    assert all(len(ds.objects(i)) == 2 for i in range(12))
    voc = build_dataset("voc", "test", **{**options, "root": make_voc(tmp_path / "voc")})
    assert isinstance(voc, VOCSegmentationDataset) and voc.split == "val"
    folder = build_dataset("folder", "train", root=make_folder(tmp_path / "f"), size=8)
    assert len(folder) == 3
    flat = make_folder(tmp_path / "flat")
    for split_file in (flat / "splits").iterdir():
        split_file.unlink()
    (flat / "splits").rmdir()
    with pytest.warns(UserWarning, match="all images"):
        assert len(build_dataset("folder", "train", root=flat)) == 4
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", "train")
    with pytest.raises(TypeError, match="colour"):
        build_dataset("fashion-scenes", "train", colour=True)


def test_unknown_dataset_lists_registered_names() -> None:
    """The error for a wrong ``--data`` name tells the user every name that works."""
    assert {"fashion-scenes", "voc", "folder"} <= set(dataset_names())
    assert dataset_names() == sorted(dataset_names())
    assert DATASETS == tuple(dataset_names())  # the compatibility constant: the same list
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as info:
        build_dataset("imagenet", "train")
    for name in dataset_names():
        assert name in str(info.value)
    # aliases, case and underscores resolve to the registered class (nothing is loaded)
    for alias in ("scenes", "Fashion", "fashion_mnist_scenes", "FASHION-SCENES"):
        assert dataset_class(alias) is FashionScenes
    assert dataset_class("VOC") is VOCSegmentationDataset
    assert dataset_class("folder") is SegmentationFolder


def test_register_dataset_by_declaration(tmp_path: Path) -> None:
    """Defining a subclass with ``name`` and ``from_options`` is all a new data set needs.

    The class registers itself when defined; ``build_dataset`` passes it the
    options its ``from_options`` lists (its own ``flavour`` becomes a valid
    option) and drops the others. It is unregistered at the end, so the other
    tests see the built-in registry only.
    """

    class ToySquares(SegmentationDataset):
        """A square of class ``flavour`` in the middle of a black ``size x size`` image."""

        name = "toy-squares"
        aliases = ("toy",)

        @classmethod
        def from_options(
            cls, split: str, *, size: int | None = None, flavour: int | None = None
        ) -> ToySquares:
            return cls(split, 8 if size is None else size, 1 if flavour is None else flavour)

        def __init__(self, split: str, size: int, flavour: int) -> None:
            self.split, self.size, self.flavour = split, size, flavour
            self.classes = ["background", "one", "two"]
            self.num_classes = 2

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
            mask = torch.zeros(self.size, self.size, dtype=torch.long)
            mask[2:-2, 2:-2] = self.flavour
            labels = rrr.data.labels_from_mask(mask, self.num_classes)
            return rrr.data.common.make_item(mask.float(), mask, labels, True, index)

    try:
        assert "toy-squares" in dataset_names() and "toy" not in dataset_names()
        ds = build_dataset("Toy_Squares", "val", flavour=2, size=6, root=tmp_path, length=99)
        assert isinstance(ds, ToySquares) and (ds.split, ds.size, ds.flavour) == ("val", 6, 2)
        item = ds[1]
        assert item["image"].shape == (3, 6, 6) and item["labels"].tolist() == [0.0, 1.0]
        assert isinstance(build_dataset("toy", "train"), ToySquares)
        assert ToySquares.option_names() == {"size", "flavour"}
        with pytest.raises(ValueError, match="already taken"):

            class Clash(SegmentationDataset):  # an alias may not reuse a registered name
                name = "another"
                aliases = ("toy-squares",)

                @classmethod
                def from_options(cls, split: str) -> Clash:
                    return cls()

        with pytest.raises(TypeError, match="from_options"):

            class NoFactory(SegmentationDataset):
                name = "no-factory"

        class Subclass(ToySquares):  # inherits the name: not registered a second time
            pass

        assert dataset_class("toy-squares") is ToySquares
        assert "another" not in dataset_names() and "no-factory" not in dataset_names()
    finally:
        assert unregister_dataset("toy-squares") is ToySquares
    assert "toy-squares" not in dataset_names() and DATASETS == tuple(dataset_names())
    with pytest.raises(ValueError, match="unknown dataset 'toy'"):
        build_dataset("toy", "train")
    with pytest.raises(TypeError, match="flavour"):  # no registered data set takes it now
        build_dataset("fashion-scenes", "train", flavour=2)


def test_image_label_files(tmp_path: Path) -> None:
    """VOC's ``id 1,3`` and the folder's ``stem,1;3`` lines share one parser and its checks."""
    voc = tmp_path / "extra.txt"
    voc.write_text("# comment\n\n2008_000004 3, 7,3\n2008_000005\n")
    assert read_image_label_file(voc, 20) == {"2008_000004": [3, 7], "2008_000005": []}
    folder = tmp_path / "labels.csv"
    folder.write_text("a, 2;1 ;2\n\n# b,9\nc,\n")
    parsed = read_image_labels(folder, 2, id_separator=",", class_separator=";", known={"a", "c"})
    assert parsed == {"a": [1, 2], "c": []}
    for path, text, problem in (
        (voc, "x 1\n2008_000004 3;7\n", "extra.txt:2: cannot parse class indices '3;7'"),
        (voc, "2008_000004 21\n", "extra.txt:1: class index 21 out of range 1..20"),
        (folder, "a,1\nzz,1\n", "labels.csv:2: 'zz' has no image"),
        (folder, "a,0;1\n", "labels.csv:1: class index 0 out of range 1..2"),
    ):
        path.write_text(text)
        with pytest.raises(DatasetError, match=problem):
            if path == voc:
                read_image_label_file(path, 20)
            else:
                read_image_labels(path, 2, id_separator=",", class_separator=";", known={"a"})
    with pytest.raises(DatasetError, match="missing.txt: image-level label file not found"):
        read_image_label_file(tmp_path / "missing.txt", 20)


def test_ignore_index_defined_once() -> None:
    """rrr.data re-exports heatmaps.labels.IGNORE_INDEX instead of defining its own."""
    assert rrr.data.IGNORE_INDEX == rrr.data.common.IGNORE_INDEX == heatmap_labels.IGNORE_INDEX
    assert "IGNORE_INDEX =" not in Path(rrr.data.common.__file__).read_text()


def test_mixed_batches_load(synthetic_root: Path) -> None:
    ds = FashionScenes("train", size=32, length=24, root=synthetic_root)
    labelled = choose_pixel_labelled(dataset_labels(ds), 3, seed=0)
    subset = PixelLabelSubset(ds, labelled)
    sampler = MixedBatchSampler(subset.labelled_indices, subset.unlabelled_indices, 4, seed=1)
    batches = list(sampler)
    for batch in batches:
        assert len(set(batch[:2])) == 2  # no labelled repeat inside a batch
    assert {i for b in batches for i in b[:2]} == set(labelled)  # labelled ones cycle
    loader = DataLoader(subset, batch_sampler=sampler)
    first = next(iter(loader))
    assert first["has_mask"].tolist() == [True, True, False, False]
    assert first["image"].shape == (4, 3, 32, 32)
