"""The status code each kind of input error is answered with (preprocessing/errors.py stays framework-free)."""
from app.core.errors import APIError
from preprocessing.errors import InputError, OversizedInput, UndecodableInput, UnsupportedInput

STATUS = {UndecodableInput: 400, UnsupportedInput: 415, OversizedInput: 413}


def as_api_error(error: InputError | APIError, where: str | None = None) -> APIError:
    """An input error as the API answers it (an APIError passes through), naming `where` the input was."""
    if isinstance(error, APIError):
        if where is None:
            return error
        return APIError(f"{where}: {error.detail}", error.status_code, error.headers)
    message = f"{where}: {error.message}" if where else error.message
    return APIError(message, STATUS.get(type(error), 400))
