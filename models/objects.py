"""CIFAR-10 object classifier: a compact pre-activation residual network.

Input: a batch of (N, 3, 32, 32) RGB float tensors in [0, 1] normalised with CIFAR_MEAN/CIFAR_STD.
"""
import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class ObjectsResNet(nn.Module):
    """PreAct-ResNet with three stages (width, 2*width, 4*width) of `blocks` blocks each."""

    def __init__(self, width: int = 64, blocks: int = 2, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        stages, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stages.append(PreActBlock(c_in, c_out, stride=2 if (i > 0 and b == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(c_in, num_classes),
        )

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))
