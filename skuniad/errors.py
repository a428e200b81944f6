"""The errors skuniad raises on purpose, under one base class.

Every exception skuniad raises to report a problem with its input or its
environment (an unreadable image, missing weights, out of device memory, a
file of the wrong kind) is a :class:`SkuniadError`, besides the built-in type
that says what kind of problem it is (``ValueError``, ``TypeError``,
``MemoryError``...). A program, or the command line, tells them apart from a
bug with ``except SkuniadError``. sklearn's own parameter errors
(``InvalidParameterError``, a ValueError) keep their type.
"""


class SkuniadError(Exception):
    """Base of the errors skuniad raises on purpose."""


class InputTypeError(SkuniadError, TypeError):
    """An input of a type skuniad does not accept (e.g. a single path where a list is expected)."""


class ModelFileError(SkuniadError, ValueError):
    """A model file that is damaged, tampered with or not a skuniad model; the message names
    the file and the field."""
