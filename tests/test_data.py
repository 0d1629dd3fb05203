"""runner/data.py on the CPU: synthetic set, augmentation, device batches, image folders and archives."""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runner import data as data_mod
from runner.train import DeviceBatches, augment, cutout
from runner.data import CLASSES, MEAN, STD, DataError, load, normalizer, synthetic

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("CIFAR_RUNNER_CACHE", str(d))
    return d


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


# ---- synthetic -----------------------------------------------------------------------------------------

def test_synthetic_shapes_and_dtypes():
    d = synthetic(n_train=64, n_test=32, seed=3)
    assert d.train_x.shape == (64, 3, 32, 32) and d.test_x.shape == (32, 3, 32, 32)
    assert d.train_x.dtype == np.uint8 and d.test_x.dtype == np.uint8
    assert d.train_y.shape == (64,) and d.test_y.shape == (32,)
    assert d.train_y.dtype == np.int64 and d.test_y.dtype == np.int64
    assert d.train_y.min() >= 0 and d.train_y.max() <= 9
    assert "synthetic" in d.source
    again = synthetic(n_train=64, n_test=32, seed=3)
    assert np.array_equal(d.train_x, again.train_x) and np.array_equal(d.test_y, again.test_y)
    assert not np.array_equal(d.train_x, synthetic(n_train=64, n_test=32, seed=4).train_x)
    assert load("synthetic").train_x.shape == (512, 3, 32, 32)


def test_subset():
    d = synthetic(n_train=64, n_test=32)
    s = d.subset(10, 0)
    assert s.train_x.shape == (10, 3, 32, 32) and s.train_y.shape == (10,)
    assert np.array_equal(s.test_x, d.test_x) and np.array_equal(s.test_y, d.test_y)
    assert "subset train=10 test=all" in s.source
    # every picked image keeps its own label, no image is picked twice, and the pick is fixed
    where = {d.train_x[j].tobytes(): j for j in range(len(d.train_y))}
    idx = [where[img.tobytes()] for img in s.train_x]
    assert len(set(idx)) == 10
    assert np.array_equal(s.train_y, d.train_y[idx])
    assert np.array_equal(d.subset(10, 0).train_x, s.train_x)
    assert d.subset() is d
    assert d.subset(1000, 5).train_x.shape[0] == 64 and d.subset(1000, 5).test_x.shape[0] == 5


# ---- augmentation --------------------------------------------------------------------------------------

def test_augment_keeps_shape_dtype_range():
    x = (_images(16) // 2 + 40).to(torch.uint8)  # values in 40..167, so the range check can fail
    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert out.min() >= x.min() and out.max() <= x.max()
    # per image: values come from that image only (flip + reflect pad + crop never mixes images)
    for i in range(len(x)):
        assert set(out[i].unique().tolist()) <= set(x[i].unique().tolist())


def test_augment_pad0_is_identity_or_flip():
    x = _images(64)
    out = augment(x, pad=0, generator=torch.Generator().manual_seed(1))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert any(same) and any(flipped)  # 64 fair coin flips: both sides occur
    # a fixed generator gives a fixed augmentation
    again = augment(x, pad=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_augment_is_a_crop_of_the_reflect_padded_image():
    x = _images(6, seed=2)
    pad = 4
    out = augment(x, pad=pad, generator=torch.Generator().manual_seed(5))
    offsets = set()
    for i in range(len(x)):
        found = None
        for img, flip in ((x[i], False), (x[i].flip(-1), True)):
            p = F.pad(img[None].float(), (pad,) * 4, mode="reflect")[0].to(torch.uint8)
            for dy in range(2 * pad + 1):
                for dx in range(2 * pad + 1):
                    if torch.equal(p[:, dy:dy + 32, dx:dx + 32], out[i]):
                        found = (flip, dy, dx)
        assert found is not None, f"image {i} is not a flipped/unflipped crop of the padded input"
        offsets.add(found)
    assert len(offsets) > 1  # per-image offsets, not one for the whole batch


@pytest.mark.parametrize("size", [1, 8, 16])
def test_cutout_zeroes_one_clipped_square_per_image(size):
    x = torch.rand(64, 3, 32, 32) + 0.5          # no zeros of its own: every zero is the cutout's
    out = cutout(x, size, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    for i in range(len(x)):
        zero = out[i] == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # same square on every channel
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert len(rows) > 0                                                     # the centre is in the image
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h <= size and w <= size and len(rows) == h * w                   # one axis-aligned rectangle
        assert torch.equal(out[i][~zero], x[i][~zero])                            # the rest is untouched
    full = [(out[i, 0] == 0).sum().item() == size * size for i in range(len(x))]
    assert any(full)                                                             # squares away from borders are whole
    if size > 1:
        assert not all(full)                                                     # ...and ones at a border are clipped


def test_cutout_only_in_training_batches():
    x = (_images(32) // 2 + 1).numpy()           # no zero pixels before normalisation
    y = np.zeros(32, dtype=np.int64)
    norm = normalizer(CPU)
    train = DeviceBatches(x, y, CPU, 32, train=True, seed=0, cutout_size=8)
    xb, _ = next(iter(train))
    assert ((xb == 0).all(dim=1).flatten(1).sum(1) > 0).all()                    # each image has its square
    test = DeviceBatches(x, y, CPU, 32, train=False, cutout_size=8)
    xb, _ = next(iter(test))
    assert torch.equal(xb, norm(torch.from_numpy(x)))                            # evaluation sees whole images


# ---- device batches ------------------------------------------------------------------------------------

def test_train_batches_keep_labels_and_drop_last():
    n, bs = 100, 16
    x = _images(n).numpy()
    y = np.arange(n, dtype=np.int64)  # unique labels: each one identifies its image
    b = DeviceBatches(x, y, CPU, bs, train=True, seed=0)
    assert len(b) == n // bs
    seen = []
    count = 0
    for xb, yb in b:
        count += 1
        assert xb.shape == (bs, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.shape == (bs,) and yb.dtype == torch.int64
        seen.extend(yb.tolist())
    assert count == n // bs
    assert len(seen) == len(set(seen)) == (n // bs) * bs      # no label repeated inside an epoch
    assert set(seen) <= set(y.tolist())
    assert seen != sorted(seen)                               # shuffled
    # the next epoch is a different permutation
    second = [v for _, yb in b for v in yb.tolist()]
    assert second != seen and len(set(second)) == len(second)


def test_train_batches_channels_last_and_readonly_input():
    x = _images(8).numpy()
    x.setflags(write=False)  # as from Ray's object store
    y = np.zeros(8, np.int64)
    y.setflags(write=False)
    b = DeviceBatches(x, y, CPU, 4, train=True, channels_last=True)
    xb, _ = next(iter(b))
    assert xb.is_contiguous(memory_format=torch.channels_last)


def test_eval_batches_cover_all_in_order():
    n, bs = 23, 5
    x = _images(n)
    y = np.arange(n, dtype=np.int64) % 10
    b = DeviceBatches(x.numpy(), y, CPU, bs, train=False)
    assert len(b) == 5
    xs, ys = zip(*b)
    assert [len(v) for v in ys] == [5, 5, 5, 5, 3]
    assert np.array_equal(torch.cat(ys).numpy(), y)
    # no augmentation in evaluation: exactly the normalized input, in order
    torch.testing.assert_close(torch.cat(xs), normalizer(CPU)(x), rtol=0, atol=0)


def test_normalizer_range():
    norm = normalizer(CPU)
    lo = norm(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    hi = norm(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    for c in range(3):
        assert lo[0, c].allclose(torch.tensor(-MEAN[c] / STD[c]), atol=1e-5)
        assert hi[0, c].allclose(torch.tensor((1 - MEAN[c]) / STD[c]), atol=1e-5)
    # CIFAR statistics put 0..255 at roughly -2..+2.1
    assert -2.0 < lo.min() < -1.7 and 2.0 < hi.max() < 2.2
    assert lo.dtype == torch.float32
    mean_colour = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8).view(1, 3, 1, 1)
    assert torch.all(norm(mean_colour).abs() < 0.01)  # the mean colour maps to ~0


# ---- files ---------------------------------------------------------------------------------------------

def _png(path: Path, color, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _tree(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for ci, cls in enumerate(CLASSES):
            for k in range(per_class):
                # colour encodes (class, image, split) so the decoded pixels can be checked
                _png(root / split / cls / f"{k:03d}.png", (ci * 20, k * 50, 100 if split == "train" else 200))
    return root


def _check_tree_data(d, per_class: int = 2):
    n = 10 * per_class
    assert d.train_x.shape == (n, 3, 32, 32) and d.test_x.shape == (n, 3, 32, 32)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int64
    assert d.train_y.tolist() == [c for c in range(10) for _ in range(per_class)]
    assert d.test_y.tolist() == d.train_y.tolist()
    # class index = torchvision's CIFAR-10 index (airplane 0 ... truck 9), visible in the red channel
    assert np.array_equal(d.train_x[:, 0, 0, 0], d.train_y * 20)
    assert np.array_equal(d.train_x[:, 1, 5, 7], np.tile([0, 50], 10))
    assert set(d.train_x[:, 2].ravel().tolist()) == {100} and set(d.test_x[:, 2].ravel().tolist()) == {200}


def test_image_folder_decodes_and_caches(tmp_path, cache, monkeypatch):
    root = _tree(tmp_path / "cifar")
    d = load(str(root))
    _check_tree_data(d)
    assert str(root) in d.source and "sha256:" in d.source and "JPEG" not in d.source
    cached = list(cache.glob("decoded-*.npz"))
    assert len(cached) == 1
    assert not list(cache.glob("*.tmp*"))

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(data_mod, "_decode_split", no_decode)
    d2 = load(str(root))
    assert d2.source == d.source
    for a, b in ((d.train_x, d2.train_x), (d.train_y, d2.train_y), (d.test_x, d2.test_x), (d.test_y, d2.test_y)):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    # an edited tree (a file added) is a new cache key: decoded again
    (root / "train" / "cat" / "extra.png").write_bytes((root / "train" / "cat" / "001.png").read_bytes())
    with pytest.raises(AssertionError, match="decoded again"):
        load(str(root))


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_tar_xz_archives_load(tmp_path, cache, nested, monkeypatch):
    tree = _tree(tmp_path / "src" / "cifar10")
    packed = tmp_path / "packed"
    packed.mkdir()
    for split in ("train", "test"):
        with tarfile.open(packed / f"{split}.tar.xz", "w:xz") as t:
            t.add(tree / split, arcname=f"cifar10/{split}" if nested else split)
    d = load(str(packed))
    _check_tree_data(d)
    assert str(packed) in d.source
    assert len(list(cache.glob("unpacked-*/.complete"))) == 1
    def no_rehash(*a, **k):
        raise AssertionError("the unpacked tree's files were read again to key the cache")
    monkeypatch.setattr(data_mod, "_tree_key", no_rehash)  # the archives' hash keys a tree we unpacked
    d2 = load(str(packed))  # unpacked once, then the decoded cache
    assert np.array_equal(d.train_x, d2.train_x) and d2.source == d.source
    assert len(list(cache.glob("unpacked-*"))) == 1


def test_missing_path_names_it_and_suggests_cifar10(tmp_path, cache):
    p = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DataError) as info:
        load(str(p))
    msg = str(info.value)
    assert str(p) in msg and "--data cifar10" in msg
    assert not cache.exists() or not any(cache.iterdir())


def test_wrong_image_size_names_the_file(tmp_path, cache):
    root = _tree(tmp_path / "cifar", per_class=1)
    bad = root / "train" / "dog" / "zzz.png"
    _png(bad, (0, 0, 0), size=(31, 32))
    with pytest.raises(DataError) as info:
        load(str(root))
    assert str(bad) in str(info.value) and "31x32" in str(info.value)


def test_missing_split_and_wrong_class_count(tmp_path, cache):
    root = _tree(tmp_path / "cifar", per_class=1)
    import shutil
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="test is missing"):
        load(str(root))
    root2 = _tree(tmp_path / "cifar2", per_class=1)
    shutil.rmtree(root2 / "train" / "frog")
    with pytest.raises(DataError, match="9 class folders"):
        load(str(root2))
