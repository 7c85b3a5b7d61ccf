"""The Redis Streams journal for several nodes.

May import: ``sse_batcher.batching`` and ``sse_batcher._exceptions``.
"""
