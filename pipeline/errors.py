"""Errors a user can cause, each with a message that names the problem."""


class InputError(ValueError):
    """Bad input data or arguments: the message says what, where, and what was expected."""

    exit_code = 2


class SchemaError(InputError):
    """The data does not match the schema the model was trained with."""


class ModelError(RuntimeError):
    """A model cannot be found or loaded."""

    exit_code = 3
