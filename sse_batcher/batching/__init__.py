"""Batching: events, aggregation rules, the batcher, and the ports it writes to
(the Journal protocol and the sink fan-out).

May import: ``sse_batcher._exceptions`` only. Everything else imports this.
"""
