"""``python -m sse_batcher``: the same program as the ``sse-batcher`` command."""

from __future__ import annotations

import sys

from sse_batcher.cli._main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
