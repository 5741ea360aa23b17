"""Image folder -> HDF5 exemplar features: a tiny generated Omniglot-like folder, a stand-in
extractor, and the file the few-shot loader then trains from."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ihlab.data.fewshot import FeatureSource, FewShot, FewShotConfig
from ihlab.data.image_features import convert, main

ALPHABETS = {"Alpha": ["char01", "char02"], "Beta": ["char01", "char02", "char03"]}


def make_folder(root: Path, per_class: int = 4) -> dict[str, list[np.ndarray]]:
    """Omniglot's layout with random grey 10x10 drawings; returns each class's pixel arrays."""
    rng = np.random.default_rng(0)
    drawn = {}
    for alphabet, characters in ALPHABETS.items():
        for character in characters:
            d = root / "images_background" / alphabet / character
            d.mkdir(parents=True)
            pixels = [rng.integers(0, 256, (10, 10), dtype=np.uint8) for _ in range(per_class)]
            for i, p in enumerate(pixels):
                Image.fromarray(p, mode="L").save(d / f"{i:02d}.png")
            drawn[f"images_background/{alphabet}/{character}"] = pixels
    (root / "README.txt").write_text("not an image")
    return drawn


def mean_rgb(images: torch.Tensor) -> torch.Tensor:
    """A stand-in extractor: (n, 3, s, s) -> (n, 3), each channel's mean."""
    return images.mean(dim=(2, 3))


def grey_as_imagenet_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """(3, size, size): one grey image as the converter should feed a network, computed here:
    resized (bilinear), scaled to [0, 1], each (identical) channel normalised with ImageNet's
    statistics."""
    resized = (
        np.asarray(
            Image.fromarray(pixels, mode="L").convert("RGB").resize((size, size), Image.BILINEAR),
            dtype=np.float32,
        )[..., 0]
        / 255.0
    )
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((resized[None] - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def expected_features(pixels: np.ndarray, size: int) -> np.ndarray:
    """What the stand-in (each channel's mean) gives for one grey image."""
    return grey_as_imagenet_input(pixels, size).mean(axis=(1, 2))


def test_every_class_directory_becomes_a_row_of_features(tmp_path: Path) -> None:
    drawn = make_folder(tmp_path / "omni")
    out = tmp_path / "features.h5"
    shape = convert(tmp_path / "omni", out, mean_rgb, exemplars=3, size=12, batch_size=4)
    assert shape == (5, 3, 3)
    with h5py.File(out) as f:
        classes = [c.decode() for c in f["classes"][()]]
        features = f["features"][()]
    assert classes == sorted(drawn)  # sorted class directories, relative to the folder
    for row, name in enumerate(classes):
        for k in range(3):  # the first three drawings by file name
            want = expected_features(drawn[name][k], 12)
            np.testing.assert_allclose(features[row, k], want, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob("*.partial"))


def test_the_few_shot_loader_reads_the_file(tmp_path: Path) -> None:
    make_folder(tmp_path / "omni")
    out = tmp_path / "features.h5"
    convert(tmp_path / "omni", out, mean_rgb, exemplars=4, size=8)
    cfg = FewShotConfig(
        features=FeatureSource.hdf5,
        hdf5_path=str(out),
        n_train_classes=3,
        n_unseen_classes=2,
        train_exemplars=1,
        eval_size=8,
        probe_size=4,
    )
    family = FewShot(cfg, seed=0)
    with h5py.File(out) as f:
        written = torch.from_numpy(f["features"][:])  # (classes, exemplars, 3)
    assert torch.equal(family.features, written)
    batch = family.sample("train", 6, torch.Generator().manual_seed(0))
    items = batch["features"][:, 0::2]  # (6, 3, 3): the context items and the query
    assert torch.equal(items, written[batch["ids"][:, 0::2], 0])  # exemplar 0 of each class


def test_a_class_with_too_few_images_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path / "omni", per_class=2)
    with pytest.raises(ValueError, match=r"char01: 2 images, fewer than exemplars=3"):
        convert(tmp_path / "omni", tmp_path / "f.h5", mean_rgb, exemplars=3)
    assert not (tmp_path / "f.h5").exists()
    with pytest.raises(ValueError, match="no images"):
        convert(tmp_path / "empty_dir_that_does_not_hold_images", tmp_path / "f.h5", mean_rgb, 1)


def test_the_command_line_uses_torchvisions_resnet(tmp_path: Path) -> None:
    """With torchvision (an optional extra: tested wherever it imports), the file holds a
    ResNet-18's pooled features of each image, equal to the same network run here."""
    torchvision = pytest.importorskip(
        "torchvision", reason="the optional ResNet extractor needs torchvision"
    )
    drawn = make_folder(tmp_path / "omni")
    out = tmp_path / "f.h5"
    args = ["--images", str(tmp_path / "omni"), "--out", str(out), "--exemplars", "2"]
    args += ["--weights", "none", "--size", "32"]
    torch.manual_seed(0)  # the random network's weights
    main(args)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)  # the same network, built here
    resnet.fc = torch.nn.Identity()
    resnet.eval()
    first_two = [pixels[:2] for _, pixels in sorted(drawn.items())]
    images = np.stack([grey_as_imagenet_input(p, 32) for cls in first_two for p in cls])
    with torch.no_grad():
        expected = resnet(torch.from_numpy(images)).view(5, 2, 512)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["features"][:], expected.numpy(), rtol=1e-4, atol=1e-5)
