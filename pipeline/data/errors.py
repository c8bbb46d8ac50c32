"""The error every data source raises for bad input: the message names the problem and the fix."""

from pipeline.errors import QpipeError


class DataError(QpipeError, ValueError):
    pass
