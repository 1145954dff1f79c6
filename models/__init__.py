"""Network definitions shared by the training scripts and the server.

ARCHITECTURES is the one table of them, by the name a manifest entry gives in "architecture": the server's
handlers pick theirs from it, training.evaluate and the tests build networks from it.
"""
from torch import nn

from models.digits import DigitsCNN, DigitsMLP
from models.objects import ObjectsResNet
from models.sentiment import SentimentLSTM

ARCHITECTURES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (DigitsMLP, DigitsCNN, ObjectsResNet,
                                                                          SentimentLSTM)}


def select_architectures(*names: str) -> dict[str, type[nn.Module]]:
    """The named entries of ARCHITECTURES (a KeyError names one that is not there)."""
    return {name: ARCHITECTURES[name] for name in names}
