"""Offcut: private, local background removal for GIMP 3 and Krita 5."""

__version__ = "0.1.0"
