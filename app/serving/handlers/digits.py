"""Handwritten digits (MNIST-style, 28x28 grey)."""
from app.serving.handlers.base import ImageClassifierHandler
from app.preprocessing.digits import digit_tensor
from models.digits import DigitsCNN, DigitsMLP


class DigitsHandler(ImageClassifierHandler):
    task = "digits"
    architectures = {"DigitsMLP": DigitsMLP, "DigitsCNN": DigitsCNN}
    input_shape = (1, 28, 28)
    to_tensor = staticmethod(digit_tensor)
