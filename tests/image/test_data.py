"""Image datasets: shapes, range, labels, and every one-line error by its text."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch
from image_helpers import FMNIST, HAVE_FMNIST, HAVE_SKLEARN
from omegaconf import OmegaConf
from PIL import Image

from immiscible_policy.image.data import fit_size, load_dataset, load_fashion_mnist, to_uint8, to_unit


def task(**kw):
    return OmegaConf.create({"image_size": None, "resize_mode": "resize", "max_images": None, **kw})


@pytest.mark.skipif(
    not HAVE_FMNIST,
    reason=f"Fashion-MNIST idx files absent at {FMNIST} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_pad_and_resize():
    ds = load_fashion_mnist(split="test", image_size=32, resize_mode="pad")
    assert ds.images.shape == (10000, 1, 32, 32) and ds.images.dtype == torch.uint8
    x = ds.all_images()
    assert x.min() == -1 and x.max() == 1 and x.dtype == torch.float32
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # 2-pixel black border
    assert ds.labels.shape == (10000,) and set(ds.labels.tolist()) == set(range(10)) and ds.num_classes == 10
    img, label = ds[0]
    assert img.shape == (1, 32, 32) and label == int(ds.labels[0])
    small = load_fashion_mnist(split="test", image_size=16, resize_mode="resize", max_images=5)
    assert (
        small.all_images().shape == (5, 1, 16, 16) and small.ref_key == "fashion_mnist-test-16-resize-first5"
    )
    assert ds.ref_key == "fashion_mnist-test-32-pad"


def test_fashion_mnist_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")


def write_png(path, size, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_recursive_resize_crop_labels(tmp_path):
    write_png(tmp_path / "cats" / "a.png", (40, 20), (255, 0, 0))
    write_png(tmp_path / "dogs" / "deep" / "b.PNG", (24, 24), (0, 0, 255))
    Image.new("RGB", (30, 50), (0, 255, 0)).save(tmp_path / "dogs" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(
        task(dataset="image_folder", path=str(tmp_path), image_size=16, labels_from_subfolders=True)
    )
    assert ds.all_images().shape == (3, 3, 16, 16)
    assert ds.labels.tolist() == [0, 1, 1] and ds.class_names == ("cats", "dogs")
    red = ds.all_images()[0]
    assert torch.allclose(red[0], torch.ones(16, 16)) and torch.allclose(red[1], -torch.ones(16, 16))
    grey = load_dataset(task(dataset="image_folder", path=str(tmp_path), image_size=8, channels=1))
    assert grey.images.shape == (3, 1, 8, 8) and grey.labels is None


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'missing'} does not exist"):
        load_dataset(task(dataset="image_folder", path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no .png/.jpg/.jpeg files"):
        load_dataset(task(dataset="image_folder", path=str(tmp_path / "empty")))
    write_png(tmp_path / "mixed" / "a.png", (8, 8))
    write_png(tmp_path / "mixed" / "b.png", (9, 8))
    with pytest.raises(ValueError, match="mixed sizes .* set task.image_size"):
        load_dataset(task(dataset="image_folder", path=str(tmp_path / "mixed")))
    write_png(tmp_path / "bad" / "a.png", (8, 8))
    (tmp_path / "bad" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        load_dataset(task(dataset="image_folder", path=str(tmp_path / "bad"), image_size=8))
    with pytest.raises(ValueError, match="task.path is required for image_folder"):
        load_dataset(task(dataset="image_folder", path=None))
    with pytest.raises(ValueError, match="task.dataset='mnist' is not supported"):
        load_dataset(task(dataset="mnist"))


def fake_cifar(root, n_per_batch=4):
    """A CIFAR-10 python tarball in the real format: cifar-10-batches-py/{data_batch_1..5,test_batch,meta}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        data[0] = i  # first image of each batch is flat, value = batch index
        labels = [(i + j) % 10 for j in range(n_per_batch)]
        (folder / name).write_bytes(
            pickle.dumps({b"batch_label": name.encode(), b"data": data, b"labels": labels})
        )
    names = [
        c.encode()
        for c in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    tar_path = root / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return tar_path, folder


def test_cifar_tarball_and_folder(tmp_path):
    tar_path, folder = fake_cifar(tmp_path)
    for path in (tar_path, folder, tmp_path):
        ds = load_dataset(task(dataset="cifar10", path=str(path), split="train"))
        assert ds.images.shape == (20, 3, 32, 32) and ds.labels.shape == (20,)
        assert ds.class_names[0] == "airplane" and ds.num_classes == 10
        assert (ds.images[4] == 1).all() and ds.labels[4] == 1  # data_batch_2's flat image
    test = load_dataset(
        task(dataset="cifar10", path=str(tar_path), split="test", image_size=16, max_images=2)
    )
    assert test.images.shape == (2, 3, 16, 16) and test.ref_key == "cifar10-test-16-resize-first2"


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 path .*nope does not exist"):
        load_dataset(task(dataset="cifar10", path=str(tmp_path / "nope")))
    bad = tmp_path / "evil" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "batches.meta"]:
        (bad / name).write_bytes(pickle.dumps({"data": print}))  # a global that is not an array
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch: refusing global"):
        load_dataset(task(dataset="cifar10", path=str(bad)))
    (tmp_path / "x.tar.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable tarball"):
        load_dataset(task(dataset="cifar10", path=str(tmp_path / "x.tar.gz")))


@pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn not installed (pip install scikit-learn)")
def test_digits():
    ds = load_dataset(task(dataset="digits", image_size=16))
    assert ds.images.shape == (1797, 1, 16, 16) and ds.labels[:3].tolist() == [0, 1, 2]
    x = ds.all_images()
    assert x.min() == -1 and x.max() <= 1 and x.max() > 0.9


def test_pad_resize_roundtrip():
    u8 = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit(u8)), u8)
    assert fit_size(u8, 32, "pad").shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="use resize_mode=resize"):
        fit_size(u8, 16, "pad")
