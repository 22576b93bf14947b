"""The error every layer raises for bad user input; a leaf, so that any module may import it."""


class ParamsError(ValueError):
    """Bad user input (params file, overrides, CLI arguments): the message is one line."""
