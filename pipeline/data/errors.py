"""The error every data source raises for bad input: the message names the problem and the fix."""


class DataError(ValueError):
    pass
