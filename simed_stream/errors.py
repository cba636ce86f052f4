"""Exceptions that carry a message meant for the person at the microscope.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class SimedError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class ConfigError(SimedError):
    """A configuration file or option is invalid."""


class StructureError(SimedError):
    """A structure file cannot be used for simulation."""


class LinkError(SimedError):
    """A ZeroMQ link cannot be set up as configured: a key file that cannot be used, or an
    endpoint off this machine without keys (and without --insecure)."""
