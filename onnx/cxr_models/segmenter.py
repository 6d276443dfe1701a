"""The anatomy segmenter: a small U-Net, grey image in [0,1] -> per-pixel organ probabilities.

Channels (``contract.SEGMENTER_CHANNELS``) are independent sigmoids, not a softmax: clavicles
overlap the lungs. Sized for the CPU: 16 base channels, 5 down-steps, run at 256² inside a 512²
input/output (see README for the measured latency).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import contract


@dataclass(frozen=True)
class SegmenterConfig:
    """Hyper-parameters that define a segmenter; stored in checkpoints and exported metadata."""

    input_size: int = 512
    base_channels: int = 16
    depth: int = 5
    #: The U-Net runs at input_size / internal_scale (2×2 average pooling in, bilinear logits out):
    #: organ outlines need no more than 256², and it cuts CPU time by 4.
    internal_scale: int = 2
    channels: tuple[str, ...] = contract.SEGMENTER_CHANNELS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


FULL = SegmenterConfig()
TINY = SegmenterConfig(input_size=64, base_channels=4, depth=3)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with batch norm, max-pool down, transposed-conv up.

    ``forward`` takes [N,1,S,S] in [0,1] and returns probabilities [N,C,S,S];
    ``logits`` returns the pre-sigmoid values (for training losses).
    """

    def __init__(self, config: SegmenterConfig = FULL):
        super().__init__()
        stride = config.internal_scale * 2**config.depth
        if config.input_size % stride:
            raise ValueError(f"input_size {config.input_size} is not a multiple of {stride} (internal_scale × 2^depth)")
        self.config = config
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_double_conv(1, widths[0])])
        self.down.extend(_double_conv(widths[i], widths[i + 1]) for i in range(config.depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(config.depth))
        )
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(widths[0], len(config.channels), 1)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - 0.5) / 0.25  # centre the [0,1] grey range; fixed, so part of the model
        scale = self.config.internal_scale
        if scale > 1:
            x = F.avg_pool2d(x, scale)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        x = self.head(x)
        if scale > 1:
            x = F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=False)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))
