"""Handwritten digits (MNIST-style, 28x28 grey)."""
from app.serving.handlers.base import ImageClassifierHandler
from preprocessing.digits import digit_tensor
from models import select_architectures


class DigitsHandler(ImageClassifierHandler):
    task = "digits"
    architectures = select_architectures("DigitsMLP", "DigitsCNN")
    input_shape = (1, 28, 28)
    to_tensor = staticmethod(digit_tensor)
