"""CIFAR-style ResNet (He et al. 2016): three stages of basic blocks; the default teacher family."""

from __future__ import annotations

from torch import nn

from autokd.models.layers import GlobalAvgPool
from autokd.models.registry import register_family


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, k: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, width: int = 16, depth: int = 1, kernel_size: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        cin = width
        for i, w in enumerate(widths):
            for j in range(depth):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, kernel_size))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


@register_family("resnet", fields={"width", "depth", "width_mult", "depth_mult", "kernel_size", "dropout"},
                 student=True, teacher=True)
def resnet(*, width: int = 16, depth: int = 1, width_mult: float = 1.0, depth_mult: float = 1.0, **kwargs) -> nn.Module:
    # As a student, width/depth come from the multipliers; as a teacher, from the teacher block.
    return ResNet(width=max(4, round(width * width_mult)), depth=max(1, round(depth * depth_mult)), **kwargs)
