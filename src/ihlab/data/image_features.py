"""Exemplar features from an image folder laid out like Omniglot: the HDF5 file few-shot data reads.

Singh et al. (after Chan et al.) embed every Omniglot drawing with a ResNet-18 and train on those
512-d vectors. Given a folder in which every class is a directory holding its images directly
(Omniglot: `images_background/<alphabet>/<character>/*.png`, 20 drawings per character), this
writes an HDF5 file with

- `features`: (classes, exemplars, dim) float32, the extractor's output per image;
- `classes`: the class directories, relative to the folder, in the row order of `features`.

Classes are the directories that hold images, in sorted order; each keeps its first `exemplars`
images (sorted by file name); a class with fewer is an error naming it. Images are read with
Pillow, converted to RGB, resized to `size` x `size` (bilinear) and normalised with ImageNet's
channel means and standard deviations, the input torchvision's pretrained ResNets expect.

The ResNet needs torchvision (the `images` extra, `pip install -e ".[images]"`, not part of the
default install; it must match the installed torch build) and, for pretrained weights, one
download on first use:

    python -m ihlab.data.image_features --images omniglot/ --out omniglot_resnet18.h5
    ihlab-train experiment=fewshot_singh data.features=hdf5 data.hdf5_path=omniglot_resnet18.h5
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Extractor = Callable[[Tensor], Tensor]  # (n, 3, size, size) -> (n, dim)


def class_dirs(root: Path) -> list[Path]:
    """Every directory under `root` (itself included) that holds image files, sorted."""
    dirs = {p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    return sorted(dirs)


def load_image(path: Path, size: int) -> Tensor:
    """(3, size, size): RGB in [0, 1], resized, normalised with ImageNet's statistics."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def resnet_extractor(arch: str = "resnet18", weights: str | None = "DEFAULT") -> Extractor:
    """A torchvision ResNet without its classification layer: the pooled features (512-d for
    resnet18/34). `weights`: a torchvision weights name, or None for a random network."""
    import torchvision  # the optional dependency: only this extractor needs it

    model = torchvision.models.get_model(arch, weights=weights)
    model.fc = torch.nn.Identity()
    model.eval()

    def extract(images: Tensor) -> Tensor:
        with torch.no_grad():
            return model(images)

    return extract


def convert(
    images: Path,
    out: Path,
    extractor: Extractor,
    exemplars: int,
    size: int = 224,
    batch_size: int = 64,
) -> tuple[int, int, int]:
    """Write `out` from the image folder (see the module docstring); returns its shape. The
    file appears only once complete (written beside it, then renamed)."""
    classes = class_dirs(images)
    if not classes:
        raise ValueError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) found below it.")
    files = []
    for d in classes:
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(found) < exemplars:
            raise ValueError(
                f"{d}: {len(found)} images, fewer than exemplars={exemplars}. Fix: lower "
                "--exemplars or remove the class."
            )
        files += found[:exemplars]
    rows = []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([load_image(p, size) for p in files[start : start + batch_size]])
        rows.append(extractor(batch).float())
    features = torch.cat(rows).view(len(classes), exemplars, -1).numpy()  # (class, ex., dim)
    partial = out.with_name(out.name + ".partial")
    with h5py.File(partial, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("classes", data=[str(d.relative_to(images)) for d in classes])
    partial.replace(out)
    return features.shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="the image folder")
    parser.add_argument("--out", type=Path, required=True, help="the HDF5 file to write")
    parser.add_argument("--exemplars", type=int, default=20, help="images kept per class")
    parser.add_argument("--arch", default="resnet18", help="a torchvision ResNet")
    parser.add_argument("--weights", default="DEFAULT", help="torchvision weights; 'none': random")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    weights = None if args.weights.lower() == "none" else args.weights
    shape = convert(
        args.images, args.out, resnet_extractor(args.arch, weights), args.exemplars, args.size
    )
    print(f"{args.out}: features {shape} (classes, exemplars, dim)")


if __name__ == "__main__":
    main()
