#!/usr/bin/env python
"""``lamella`` with its access layer switched off: for benchmarks/serve_chunks.py only, never to serve anything.

Every request is admitted as an anonymous visitor without reading a credential, the route's rule
or the dataset's visibility (``BaseHandler.admit`` does nothing). Everything else is the current
code: the same routes, handlers, connection handling and chunk cache. Measured beside the real
server on the same data, it gives what the access checks themselves cost per request.

Usage: .venv/bin/python benchmarks/no_access_checks.py serve --data-dir DIR [lamella serve options]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is first on the path, and benchmarks/annotations.py would hide the package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from viewer.cli import main  # noqa: E402
from viewer.handlers.base import BaseHandler  # noqa: E402


def admit_everyone(self: BaseHandler) -> None:
    """Admitted, as anonymous, whatever the request (the actor and dataset access stay at their defaults)."""
    return None


BaseHandler.admit = admit_everyone  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
