"""Workers: the emitting mixin and the logging handler.

May import: ``sse_batcher.batching._events`` and ``sse_batcher._exceptions``.
"""
