"""Anatomy-XNet: DenseNet-121 features, anatomy-aware attention (A³) from lung and heart masks,
probabilistic weighted average pooling (PWAP) per class -> 14 ChestX-ray14 probabilities and maps.

Which parts follow the paper (Kamal et al., IEEE JBHI 2022, arXiv 2106.05915) and which are
reconstructions is written in ``onnx/README.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet

from . import contract


@dataclass(frozen=True)
class XNetConfig:
    """Hyper-parameters that define an Anatomy-XNet; stored in checkpoints and exported metadata."""

    input_size: int = 512
    mask_size: int = 256
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    gate_reduction: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "XNetConfig":
        d = dict(d)
        d["block_config"] = tuple(d["block_config"])
        return cls(**d)

    @property
    def map_size(self) -> int:
        return self.input_size // contract.CLASS_MAP_STRIDE


#: Full size: torchvision's DenseNet-121 exactly (ImageNet / CheXNet state dicts load into it).
FULL = XNetConfig()
#: Tiny test model: the same code path with a toy DenseNet.
TINY = XNetConfig(input_size=64, mask_size=32, growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2, gate_reduction=2)


def densenet_features(config: XNetConfig) -> nn.Sequential:
    """The DenseNet feature extractor in torchvision's layout (``conv0 ... denseblock4, norm5``)."""
    net = DenseNet(
        growth_rate=config.growth_rate,
        block_config=config.block_config,
        num_init_features=config.num_init_features,
        bn_size=config.bn_size,
    )
    return net.features


def feature_channels(config: XNetConfig) -> int:
    """Channels of the final DenseNet map (1024 for DenseNet-121)."""
    c = config.num_init_features
    for i, n in enumerate(config.block_config):
        c += n * config.growth_rate
        if i != len(config.block_config) - 1:
            c //= 2
    return c


class AnatomyAttention(nn.Module):
    """A³ for one organ: out = BN(g ⊙ (F ⊙ M) + (1 − g) ⊙ F), with g a per-channel sigmoid gate
    computed from the average- and max-pooled F and F ⊙ M."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.Linear(4 * channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked = features * mask
        descriptor = torch.cat(
            [
                features.mean(dim=(2, 3)),
                features.amax(dim=(2, 3)),
                masked.mean(dim=(2, 3)),
                masked.amax(dim=(2, 3)),
            ],
            dim=1,
        )
        g = torch.sigmoid(self.gate(descriptor))[:, :, None, None]
        return self.norm(g * masked + (1 - g) * features)


class PWAP(nn.Module):
    """Probabilistic weighted average pooling, one 1×1 conv shared between map and logit.

    For class c: L_c = w_c·F + b_c (a logit map), P_c = σ(L_c) normalised over the image,
    f_c = Σ P_c F (a weighted average of the features), logit_c = w_c·f_c + b_c.
    """

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(channels, classes, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.classifier(features)  # [N,K,h,w]
        # the clamp only keeps σ above float32 underflow (σ(-80) ≈ 2e-35), so the sum is never 0
        weights = torch.sigmoid(maps.clamp(min=-80.0)).flatten(2)  # [N,K,hw]
        weights = weights / weights.sum(dim=2, keepdim=True)
        pooled = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # [N,K,C]
        w = self.classifier.weight.flatten(1)  # [K,C]
        logits = (pooled * w).sum(dim=2) + self.classifier.bias
        return logits, maps


class AnatomyXNet(nn.Module):
    """``forward(image [N,3,S,S] normalised, masks [N,2,K,K] in [0,1])`` returns
    ``(probabilities [N,14], class_maps [N,14,S/32,S/32])``; ``logits`` gives the pre-sigmoid
    class scores for training."""

    def __init__(self, config: XNetConfig = FULL):
        super().__init__()
        if config.mask_size % config.map_size:
            raise ValueError(f"mask_size {config.mask_size} is not a multiple of the map size {config.map_size}")
        self.config = config
        self.features = densenet_features(config)
        channels = feature_channels(config)
        self.attention = nn.ModuleList(
            AnatomyAttention(channels, config.gate_reduction) for _ in contract.CLASSIFIER_MASK_CHANNELS
        )
        self.pwap = PWAP(channels, len(contract.LABELS))
        self.mask_pool = config.mask_size // config.map_size

    def logits(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.relu(self.features(image))
        organ = F.avg_pool2d(masks, self.mask_pool)  # organ fraction of each feature cell
        attended = [a(features, organ[:, i : i + 1]) for i, a in enumerate(self.attention)]
        fused = torch.stack(attended, dim=0).mean(dim=0)
        return self.pwap(fused)

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, maps = self.logits(image, masks)
        return torch.sigmoid(logits), maps

    def load_backbone(self, state_dict: dict) -> list[str]:
        """Load DenseNet weights (torchvision ImageNet, CheXNet, or a bare ``features`` dict).

        Keys may carry ``module.``, ``densenet121.`` or ``features.`` prefixes and the old
        ``norm.1``/``conv.2`` spelling; classifier weights are ignored. Returns missing keys.
        """
        import re

        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
        cleaned = {}
        for key, value in state_dict.items():
            for prefix in ("module.", "densenet121."):
                key = key.removeprefix(prefix)
            if not key.startswith("features."):
                continue
            key = key.removeprefix("features.")
            match = pattern.match(key)
            if match:
                key = match.group(1) + match.group(2)
            cleaned[key] = value
        result = self.features.load_state_dict(cleaned, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"unexpected backbone keys: {result.unexpected_keys[:5]}")
        return list(result.missing_keys)
