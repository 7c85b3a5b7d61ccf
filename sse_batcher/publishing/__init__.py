"""Publishing: ship events to a remote ``serve`` over HTTP (sans-I/O core, queue,
spool, sync and async front ends).

May import: ``sse_batcher.batching._events`` and ``sse_batcher._exceptions``.
"""
