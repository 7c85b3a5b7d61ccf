"""The embedded SQLite journal (WAL, group commit, retention).

May import: ``sse_batcher.batching`` and ``sse_batcher._exceptions``.
"""
