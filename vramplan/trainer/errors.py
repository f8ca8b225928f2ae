"""Errors of the measurement path (the trainer)."""

from vramplan.errors import VramplanError


class MeasurementError(VramplanError):
    """A measurement could not be made as asked (bad environment, missing package, crashed worker).

    An out-of-memory during the run is *not* an error: it is recorded as ``oom=True``.
    """
