"""The one exception type every input pipeline raises for bad data."""


class DataError(ValueError):
    """Input data that cannot be used: says which path and what was expected."""


class CorruptImageError(DataError):
    """An image file that exists but cannot be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode image file '{path}': {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # Raised in Grain worker processes and re-raised here: must survive pickling.
        return type(self), (self.path, self.reason)
