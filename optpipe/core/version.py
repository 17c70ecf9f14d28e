"""optpipe's version, written once (pyproject.toml reads it here; the package root re-exports it)."""

__version__ = "0.1.0"
