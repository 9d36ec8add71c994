"""`python -m edgeci` — same as the `edgeci` console script."""

from edgeci.cli import entry

entry()
