"""Typed exceptions shared by the contract modules.

Library code raises these; only each CLI's ``main`` turns them into exit codes and one-line
messages. Every message says what is wrong and, where there is one, what to do about it.
"""


class GalaxyEdgeError(Exception):
    """Base class of every error this project raises on purpose."""


class UnknownClassError(GalaxyEdgeError):
    """A class name or id that is not one of the ten Galaxy10 DECaLS classes."""


class PreprocessError(GalaxyEdgeError):
    """A frame or a preprocessing spec that cannot be processed."""


class ManifestError(GalaxyEdgeError):
    """A bundle manifest that is missing, malformed or does not match its files."""


class StaleBundleError(ManifestError):
    """A bundle that is valid but was built for another device, TensorRT or model."""
