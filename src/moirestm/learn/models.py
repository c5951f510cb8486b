"""Regression networks for FT-LDOS images, in plain PyTorch (no downloaded weights).

Every model maps a batch ``(B, 1, h, w)`` of normalised images to ``(B, n_targets)``
standardised targets and is rebuilt from a JSON-able config by :func:`build_model`,
which is what makes checkpoints self-describing.  Each network is ``head(trunk(x))`` with
all its dropout layers in ``head``: Monte-Carlo dropout then runs the (expensive) trunk
once per image and only the head once per dropout mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MoireSTMError

#: Input side (pixels, after area down-sampling) used when the caller does not choose one.  The CNN
#: at 64 px beat 128 px on `standard` (group split, 10-minute budget: 0.069 vs 0.107 eV single images,
#: 0.039 vs 0.067 eV stacked biases; docs/benchmarks.md): 4x cheaper epochs, white noise averaged down.
DEFAULT_INPUT_SIZE = {"mlp": 64, "cnn": 64, "resnet18": 128}


class MLP(nn.Module):
    """Fully connected baseline: flatten -> hidden layers (GELU, dropout) -> targets."""

    def __init__(self, in_shape: tuple[int, int], n_targets: int = 1, hidden: tuple[int, ...] = (256, 64),
                 dropout: float = 0.1, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * in_shape[0] * in_shape[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_targets))
        self.trunk = nn.Identity()
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _norm(kind: str, channels: int) -> nn.Module:
    """``batch`` (BatchNorm) or ``group`` (GroupNorm, 8 channels a group: independent of the batch,
    so small batches and few steps per epoch do not leave stale running statistics)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise MoireSTMError(f"unknown norm {kind!r}; use 'batch' or 'group'")


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "group") -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            _norm(norm, cout), nn.ReLU(inplace=True)]


class CompactCNN(nn.Module):
    """Compact CNN (the fast default).

    A stride-2 stem, three conv/pool stages, then an adaptive average pool to a
    ``pool`` x ``pool`` grid: unlike a global pool it keeps coarse *position* in
    reciprocal space, which is what distinguishes moiré from Bragg peaks.
    """

    def __init__(self, in_shape: tuple[int, int], n_targets: int = 1, width: int = 16, pool: int = 4,
                 dropout: float = 0.1, norm: str = "group", in_channels: int = 1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w, kernel=5, stride=2, norm=norm),
            *_conv_bn(w, 2 * w, norm=norm), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w, norm=norm), nn.MaxPool2d(2),
            *_conv_bn(4 * w, 6 * w, norm=norm), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(pool),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(6 * w * pool * pool, 128),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, n_targets))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016) with ``in_channels`` inputs (default 1) and a dropout + linear regression head.

    ``norm="batch"`` is the original; ``"group"`` suits very small batches.
    """

    def __init__(self, in_shape: tuple[int, int], n_targets: int = 1, width: int = 64, dropout: float = 0.1,
                 norm: str = "batch", in_channels: int = 1):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False), _norm(norm, w),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, n_targets))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


MODELS = {"mlp": MLP, "cnn": CompactCNN, "resnet18": ResNet18}


def build_model(config: dict) -> nn.Module:
    """Build a network from its config.

    Parameters
    ----------
    config : ``{"name": "mlp" | "cnn" | "resnet18", "in_shape": [h, w], "n_targets": int, **kwargs}``;
        extra keys are passed to the model class (e.g. ``dropout``, ``width``, ``in_channels``).
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise MoireSTMError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        in_shape = tuple(int(s) for s in cfg.pop("in_shape"))
        n_targets = int(cfg.pop("n_targets"))
    except (KeyError, TypeError, ValueError) as exc:
        raise MoireSTMError(f"model config needs 'in_shape' and 'n_targets' ({exc})") from None
    for key in ("hidden",):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    try:
        return MODELS[name](in_shape, n_targets, **cfg)
    except TypeError as exc:
        raise MoireSTMError(f"bad options for model {name!r}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
