"""wiresnake: WireGuard in Python."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

# The one version string is pyproject.toml's; an installed (or editable) package carries it.
try:
    __version__ = version("wiresnake")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
