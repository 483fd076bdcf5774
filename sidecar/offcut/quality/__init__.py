"""Mask quality: metrics and ``offcut eval``."""
