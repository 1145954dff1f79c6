"""Compatibility imports: the code moved to decoding, digits and objects (app.preprocessing)."""
from app.preprocessing.decoding import *  # noqa: F401,F403
from app.preprocessing.decoding import declared_pixels, decode_base64_image, open_image  # noqa: F401
from app.preprocessing.digits import digit_tensor, mnist_normalise, to_ink  # noqa: F401
from app.preprocessing.objects import normalise_cifar_uint8, object_tensor  # noqa: F401
