"""edgeci: ship RHEL for Edge / Fedora IoT ostree images from blueprints in git to a fleet.

Kept import-free so that `edgeci --version` starts fast; everything heavy is imported lazily.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
