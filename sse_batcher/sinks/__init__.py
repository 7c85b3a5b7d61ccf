"""Sinks: secondary destinations fed after each append (the JSON-lines archive).

May import: ``sse_batcher.batching`` and ``sse_batcher._exceptions``.
"""
