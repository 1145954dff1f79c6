"""Everyday objects (CIFAR-10, 32x32 RGB)."""
from app.serving.handlers.base import ImageClassifierHandler
from preprocessing.objects import object_tensor
from models import select_architectures


class ObjectsHandler(ImageClassifierHandler):
    task = "objects"
    architectures = select_architectures("ObjectsResNet")
    input_shape = (3, 32, 32)
    to_tensor = staticmethod(object_tensor)
