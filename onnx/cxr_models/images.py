"""Image loading and the contract's preprocessing, in numpy (no PyTorch): PNG -> [0,1] grey at the
model size, classifier normalisation, and segmenter masks -> classifier organ masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import contract


def load_grey(path: str | Path, size: int) -> np.ndarray:
    """A PNG/JPEG as float32 [size,size] in [0,1] (0 = black), anti-aliased resize (PIL bilinear
    widens its kernel when shrinking). 16-bit files are scaled by their type's maximum."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
        else:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return resize(arr, size)


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a float32 2-D array to [size,size] with PIL's anti-aliased bilinear filter."""
    if arr.shape == (size, size):
        return arr.astype(np.float32)
    out = Image.fromarray(arr.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def segmenter_input(greys: list[np.ndarray]) -> np.ndarray:
    """[N,1,S,S] float32 from a list of [S,S] grey images."""
    return np.stack(greys)[:, None].astype(np.float32)


def classifier_input(greys: list[np.ndarray], mean=contract.IMAGENET_MEAN, std=contract.IMAGENET_STD) -> np.ndarray:
    """[N,3,S,S] float32: grey replicated to 3 channels, then (x - mean) / std per channel."""
    x = np.repeat(np.stack(greys)[:, None], 3, axis=1)
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return ((x - m) / s).astype(np.float32)


def organ_masks(seg: np.ndarray, channels: tuple[str, ...], mask_size: int) -> np.ndarray:
    """Segmenter output [N,C,S,S] -> classifier masks [N,2,K,K]: lungs = max(left, right), heart,
    block-averaged (when S is a multiple of K) or resized to K."""
    left, right, heart = (seg[:, channels.index(c)] for c in contract.SEGMENTER_REQUIRED_CHANNELS)
    organs = np.stack([np.maximum(left, right), heart], axis=1).astype(np.float32)
    n, m, s, _ = organs.shape
    if s == mask_size:
        return organs
    if s % mask_size == 0:
        f = s // mask_size
        return organs.reshape(n, m, mask_size, f, mask_size, f).mean(axis=(3, 5)).astype(np.float32)
    return np.stack([[resize(organs[i, j], mask_size) for j in range(m)] for i in range(n)])
