"""Service: the hub (fan-out to subscribers), the Starlette app, ingest, auth, metrics.

May import: ``batching``, ``journals``, ``sinks`` and ``sse_batcher._exceptions``.
"""
