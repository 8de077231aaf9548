"""Locate and read the real Fashion-MNIST idx files.

Search order for the four files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
gzipped or plain):

1. an explicit ``root`` directory, holding the files directly or in
   torchvision's ``root/FashionMNIST/raw/`` layout;
2. the Debian package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
3. the user cache ``~/.cache/rrr/fashion-mnist`` (same two layouts).

Nothing is downloaded unless ``download=True``, which fetches into the user
cache through :class:`torchvision.datasets.FashionMNIST`.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .common import DatasetError

__all__ = [
    "CACHE_DIR",
    "DEBIAN_DIR",
    "FASHION_MNIST_CLASSES",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The 10 Fashion-MNIST class names, in label order 0..9."""

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/rrr/fashion-mnist").expanduser()

_PREFIX = {"train": "train", "test": "t10k"}

# idx type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped or plain) into a numpy array.

    A small hand-written reader rather than torchvision's: torchvision's reader
    only works inside its own ``FashionMNIST/raw`` folder layout and on
    uncompressed files, while the Debian package ships the gzipped files in a
    flat directory. The magic number (two zero bytes, a type code, the number
    of dimensions) and the data size are checked; any problem raises
    :class:`DatasetError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: idx file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read/decompress idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: idx header truncated ({len(raw)} bytes for {ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: idx data size {len(raw) - header} bytes does not match shape {shape} "
            f"({expected} bytes)"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _candidate_dirs(root: str | Path | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [root, root / "FashionMNIST" / "raw"]
    dirs += [DEBIAN_DIR, CACHE_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _files_in(directory: Path, split: str) -> tuple[Path, Path] | None:
    prefix = _PREFIX[split]
    images = _find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    return images, labels


def find_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = False
) -> tuple[Path, Path]:
    """Return the ``(images, labels)`` idx file paths of ``split`` ("train" or "test").

    Searches the locations in the module docstring; with ``download=True`` and
    nothing found, downloads into the user cache via torchvision. Raises
    :class:`DatasetError` listing the paths searched when nothing is found.
    """
    if split not in _PREFIX:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    dirs = _candidate_dirs(root)
    for directory in dirs:
        found = _files_in(directory, split)
        if found is not None:
            return found
    if download:
        from torchvision.datasets import FashionMNIST

        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(CACHE_DIR), train=split == "train", download=True)
        found = _files_in(CACHE_DIR / "FashionMNIST" / "raw", split)
        if found is not None:
            return found
    searched = ", ".join(str(d) for d in dirs)
    raise DatasetError(
        f"Fashion-MNIST {split} files ({_PREFIX[split]}-images-idx3-ubyte[.gz], "
        f"{_PREFIX[split]}-labels-idx1-ubyte[.gz]) not found; searched: {searched}. "
        "Install the Debian package dataset-fashion-mnist, pass root=..., or use download=True."
    )


@functools.lru_cache(maxsize=8)
def _load_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise DatasetError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
    if len(labels) == 0:
        raise DatasetError(f"{images_path}: empty split (0 images)")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST ``split`` as ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    The arrays are cached in-process per file pair (scenes are built many
    times); treat them as read-only.
    """
    images_path, labels_path = find_fashion_mnist(split, root=root, download=download)
    return _load_pair(images_path.resolve(), labels_path.resolve())
