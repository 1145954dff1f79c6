"""What can be wrong with an input, framework-free: the preprocessing, the handlers and the style engine raise
these; the API (app/api/input_errors.py) answers them with a status code, the style worker fails the job with the
sentence."""


class InputError(ValueError):
    """An input that cannot be used, said in a sentence a person can act on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def within(self, where: str) -> "InputError":
        """The same error naming where the input was: "images[3]: ..."."""
        return type(self)(f"{where}: {self.message}")


class UndecodableInput(InputError):
    """Bad base64, a truncated or corrupt image, a blank digit image, values the network cannot take."""


class UnsupportedInput(InputError):
    """Not an image, or an image format that is not read."""


class OversizedInput(InputError):
    """An image with more pixels, or a longer side, than the server decodes."""
