"""CIFAR-10 as uint8 tensors, decoded once and cached (batches and augmentation: runner/train.py).

    python -m runner sweep --config variants/default.yaml --data /path/to/cifar10-jpeg

Sources (`data.source` in the sweep file, or `--data`):
  cifar10     torchvision's official CIFAR-10, downloaded into the cache directory when missing
  PATH        an image-folder tree `train/<class>/*.png|jpg` + `test/<class>/*`, or a folder holding
              `train.tar.xz` / `test.tar.xz` of such trees (unpacked once into the cache)
  synthetic   a small generated set whose classes are separable (tests, smoke runs); never a real result

The driver loads a dataset once and ships it to every Ray task through the object store (numpy arrays,
zero-copy), so workers on other nodes need no data of their own.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runner import files

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the official CIFAR-10 train set, used for every source so that
# preprocessing is identical across runs (the brief's "same preprocessing").
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
# The machine refusing the unpacked files (a full disk, a read-only or foreign cache), not a damaged archive.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class DataError(RuntimeError):
    """The data cannot be found or read; the message says where it looked and how to get it."""


@dataclass(frozen=True)
class Cifar:
    train_x: np.ndarray   # (N, 3, 32, 32) uint8
    train_y: np.ndarray   # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    source: str           # human-readable: name, where from, checksum of the decoded arrays
    # What load() was given (cifar10, synthetic, a folder made absolute) and its root: a run folder
    # records them, so export / train / a resume reload the same data from any working directory.
    origin: str = ""
    root: str | None = None

    def subset(self, train: int = 0, test: int = 0) -> "Cifar":
        """A fixed random subset (same images every call): image folders are stored class by class,
        so the first N images would all be airplanes."""
        if not train and not test:
            return self
        tr, te = _pick(len(self.train_y), train), _pick(len(self.test_y), test)
        return dataclasses.replace(self, train_x=self.train_x[tr], train_y=self.train_y[tr],
                                   test_x=self.test_x[te], test_y=self.test_y[te],
                                   source=f"{self.source} [subset train={train or 'all'} test={test or 'all'}]")


def _pick(n: int, k: int) -> np.ndarray | slice:
    if not k or k >= n:
        return slice(None)
    return np.sort(np.random.default_rng(0).permutation(n)[:k])


def cache_dir() -> Path:
    if os.environ.get("CIFAR_RUNNER_CACHE"):
        return Path(os.environ["CIFAR_RUNNER_CACHE"])
    try:
        return Path.home() / ".cache" / "cifar-runner"
    except RuntimeError:  # no home directory for this uid (a container's user without a passwd entry)
        raise DataError("no home directory to keep the data cache in: set CIFAR_RUNNER_CACHE to a writable "
                        "folder") from None


def load(source: str = "cifar10", root: str | None = None) -> Cifar:
    if source == "synthetic":
        return dataclasses.replace(synthetic(), origin=source)
    if source == "cifar10":
        return dataclasses.replace(_load_official(Path(root) if root else cache_dir() / "torchvision"),
                                   origin=source, root=root)
    path = Path(source).expanduser()
    return dataclasses.replace(_load_folder(path), origin=str(path.resolve()))


def recorded(run_dir: Path) -> dict | None:
    """{source, root, sweep_file} of the data the sweep in run_dir used (sweep.json's `data`, runner/sweep.py);
    from a sweep killed before it wrote sweep.json, resolved_config.json's data section; None where neither is."""
    for name in ("sweep.json", "resolved_config.json"):
        try:
            rec = files.read_json(Path(run_dir) / name).get("data")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(rec, dict) and rec.get("source"):
            return rec
    return None


def synthetic(n_train: int = 512, n_test: int = 256, seed: int = 0) -> Cifar:
    """Random images with a class-dependent colour shift: learnable in a few steps, for tests only."""
    g = np.random.default_rng(seed)

    def make(n):
        y = g.integers(0, 10, n)
        base = g.integers(0, 96, (n, 3, 32, 32))
        shift = (np.stack([y * 15, (9 - y) * 15, (y % 3) * 60], 1)[:, :, None, None])
        return np.clip(base + shift, 0, 255).astype(np.uint8), y.astype(np.int64)

    (trx, tr_y), (tex, te_y) = make(n_train), make(n_test)
    return Cifar(trx, tr_y, tex, te_y, f"synthetic (seed {seed}, {n_train} train / {n_test} test)")


def _checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _load_official(root: Path) -> Cifar:
    import torchvision

    try:
        tr = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        te = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as e:  # no network, a proxy ...
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS | {errno.EEXIST, errno.ENOTDIR}:
            raise e if e.filename else files.naming(e, root, root)  # the machine said no, not the network
        raise DataError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {files.short(e, 200)}). "
            f"Either give the machine internet access once, copy torchvision's cifar-10-batches-py/ into {root}, "
            f"or point --data at an image-folder copy (train/<class>/*.png, test/<class>/*.png) "
            f"or at a folder holding train.tar.xz and test.tar.xz of one.") from None
    trx = np.ascontiguousarray(tr.data.transpose(0, 3, 1, 2))
    tex = np.ascontiguousarray(te.data.transpose(0, 3, 1, 2))
    tr_y, te_y = np.asarray(tr.targets, np.int64), np.asarray(te.targets, np.int64)
    return Cifar(trx, tr_y, tex, te_y, f"cifar10 official (torchvision, {root}) sha256:{_checksum(trx, tex)}")


def _load_folder(path: Path) -> Cifar:
    if not path.exists():
        raise DataError(
            f"data folder {path} does not exist. Expected an image-folder tree "
            f"({path}/train/<class>/*.png and {path}/test/<class>/*.png), a folder with train.tar.xz and "
            f"test.tar.xz of such a tree, or use `--data cifar10` to download the official set.")
    tree, key = path, None
    if (path / "train.tar.xz").exists() and not (path / "train").is_dir():
        tree, key = _unpack(path)
    # A tree we unpacked is named by its archives' bytes, so their hash keys it too; any other tree is keyed
    # on its files' bytes (reading the JPEG copy's 60,000 files took 16 s of the 2-core quick start).
    cached = cache_dir() / f"decoded-{key or _tree_key(tree)}.npz"
    if cached.exists():
        try:
            with np.load(cached) as z:
                return Cifar(z["train_x"], z["train_y"], z["test_x"], z["test_y"], str(z["source"]))
        except Exception:  # a damaged cache file is only a cache: decode again and replace it
            pass
    parts = {}
    for split in ("train", "test"):
        split_dir = tree / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is missing: an image folder needs {tree}/train/<class>/ and "
                            f"{tree}/test/<class>/ with one sub-folder per class ({', '.join(CLASSES)}).")
        parts[split] = _decode_split(split_dir)
    (trx, tr_y), (tex, te_y) = parts["train"], parts["test"]
    first = next((tree / "test").rglob("*.*"), None)
    jpeg = " (JPEG copy: accuracy is a proxy for the official test set)" if first is not None and \
        first.suffix.lower() in (".jpg", ".jpeg") else ""
    source = f"image folder {path} sha256:{_checksum(trx, tex)}{jpeg}"
    files.write_new(cached, lambda f: np.savez(f, train_x=trx, train_y=tr_y, test_x=tex, test_y=te_y,
                                               source=np.array(source)))
    return Cifar(trx, tr_y, tex, te_y, source)


def _tree_key(tree: Path) -> str:
    """Identify a tree by its path and its image files' names and *bytes*: a file edited in place, even
    to the same size, gives another key and the tree is decoded again (hashing ~100 MB of CIFAR JPEGs
    takes about a second, decoding them far longer)."""
    h = hashlib.sha256(str(tree.resolve()).encode())
    for p in sorted(tree.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            h.update(f"{p.relative_to(tree)}:{p.stat().st_size}:".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _unpack(path: Path) -> tuple[Path, str]:
    """Unpack train.tar.xz + test.tar.xz into the cache, keyed on the archives' bytes (a replaced archive
    is unpacked again); return the tree and that key. Unpacked into a temporary folder and renamed when
    complete, so a truncated archive or a kill half-way never leaves a half tree that a later run would
    take as whole."""
    archives = [path / f"{split}.tar.xz" for split in ("train", "test")]
    h = hashlib.sha256()
    for archive in archives:
        if not archive.exists():
            raise DataError(f"{archive} is missing next to {archives[0]}")
        with open(archive, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    key = h.hexdigest()[:16]
    dest = cache_dir() / f"unpacked-{key}"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        except OSError as e:
            raise files.naming(e, dest, dest.parent / f".{dest.name}.") from e
        try:
            for archive in archives:
                try:
                    with tarfile.open(archive) as t:
                        t.extractall(tmp, filter="data")
                except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as e:
                    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:  # the cache said no, not the archive
                        raise files.naming(e, dest, tmp) from e
                    raise DataError(f"{archive} cannot be unpacked ({type(e).__name__}: {e}); it looks "
                                    f"truncated or damaged: copy it again") from None
            (tmp / ".complete").touch()  # older caches marked a finished unpack so; kept for tools
            try:
                os.rename(tmp, dest)
            except OSError:  # another process finished the same archives first: use its copy
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # The archives may hold train/ directly or one folder level above it.
    if not (dest / "train").is_dir():
        inner = [d for d in dest.iterdir() if (d / "train").is_dir()]
        if inner:
            return inner[0], key
    return dest, key


def _decode_split(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    names = [d.name for d in class_dirs]
    # torchvision's class order when the folder names are the CIFAR-10 names, alphabetical otherwise.
    order = list(CLASSES) if sorted(names) == sorted(CLASSES) else sorted(names)
    if len(order) != 10:
        raise DataError(f"{split_dir} has {len(order)} class folders ({', '.join(names) or 'none'}); need 10")
    for d in class_dirs:
        for p in sorted(d.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except Exception as e:  # not an image, truncated, a decompression bomb: name the file
                raise DataError(f"{p} is not a readable image ({type(e).__name__}: {e}); "
                                f"remove or replace it") from None
            if a.shape != (32, 32, 3):
                raise DataError(f"{p} is {a.shape[1]}x{a.shape[0]}; CIFAR-10 images are 32x32")
            images.append(a)
            labels.append(order.index(d.name))
    if not images:
        raise DataError(f"no images under {split_dir}")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), np.asarray(labels, np.int64)


# ---- on the device -------------------------------------------------------------------------------------

def normalizer(device: torch.device):
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return lambda x_uint8: (x_uint8.float() - mean) / std
