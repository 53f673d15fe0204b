"""The engine's version, recorded in every run's ``versions`` attribute."""

__version__ = "0.1.0"
