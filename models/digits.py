"""MNIST digit classifiers: the classic sigmoid MLP and a stronger CNN.

Both take a batch of (N, 1, 28, 28) float tensors normalised with MNIST_MEAN/MNIST_STD.
"""
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DIGIT_CLASSES = [str(d) for d in range(10)]


class DigitsMLP(nn.Module):
    """784-128-10 with a sigmoid hidden layer, as in the classic tutorials."""

    def __init__(self, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.Sigmoid(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DigitsCNN(nn.Module):
    """Two VGG-style blocks and a small classifier head."""

    def __init__(self, width: int = 32, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, width), _conv_bn(width, width), nn.MaxPool2d(2),
            _conv_bn(width, 2 * width), _conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),
            _conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
