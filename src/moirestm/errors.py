"""Exception type for bad input and unusable files; the CLI prints these without a traceback."""


class MoireSTMError(ValueError):
    """A user-facing error whose message names the problem."""


def finite_number(name: str, value) -> float:
    """``value`` as a float, or a MoireSTMError naming ``name`` if it is not a finite number."""
    import math

    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MoireSTMError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise MoireSTMError(f"{name} must be finite, got {value}")
    return value


def positive_number(name: str, value) -> float:
    """``value`` as a float, or a MoireSTMError naming ``name`` if it is not a finite positive number."""
    value = finite_number(name, value)
    if value <= 0:
        raise MoireSTMError(f"{name} must be a positive number, got {value}")
    return value
