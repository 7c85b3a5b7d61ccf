"""The test SSE parser against the WHATWG examples and the rules tests rely on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ..sse_parser import SSEMessage, SSEParser, parse_stream


def test_spec_example_multiline_data() -> None:
    raw = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert parse_stream(raw) == [SSEMessage("message", "YHOO\n+2\n10", "")]


def test_spec_example_ids_and_comments() -> None:
    raw = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n"
    )
    parser = SSEParser()
    events = parser.feed(raw) + parser.close()
    assert events == [
        SSEMessage("message", "first event", "1"),
        SSEMessage("message", "second event", ""),
        SSEMessage("message", " third event", ""),
    ]
    assert parser.comments == [" test stream"]


def test_spec_example_empty_data_and_unterminated_tail() -> None:
    assert parse_stream(b"data\n\ndata\ndata\n\ndata:") == [
        SSEMessage("message", "", ""),
        SSEMessage("message", "\n", ""),
    ]


def test_spec_example_one_space_stripped() -> None:
    assert parse_stream(b"data:test\n\ndata: test\n\ndata:  test\n\n") == [
        SSEMessage("message", "test", ""),
        SSEMessage("message", "test", ""),
        SSEMessage("message", " test", ""),
    ]


def test_line_ends_cr_lf_crlf_mixed_and_split_across_chunks() -> None:
    raw = b"event: a\rdata: 1\r\n\r\nevent: b\ndata: 2\r\rdata: 3\n\n"
    expected = [SSEMessage("a", "1", ""), SSEMessage("b", "2", ""), SSEMessage("message", "3", "")]
    for size in (None, 1, 2, 3, 7):
        assert parse_stream(raw, chunk_size=size) == expected
    # A CR ending one chunk and the LF starting the next are one line end, not two.
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [SSEMessage("message", "x", "")]


def test_bom_skipped_once_only_at_start() -> None:
    bom = "\ufeff".encode()
    assert parse_stream(bom + b"data: a\n\n") == [SSEMessage("message", "a", "")]
    # Split inside the BOM's three bytes.
    assert parse_stream(bom + b"data: a\n\n", chunk_size=1) == [SSEMessage("message", "a", "")]
    # A second BOM is part of the field name: "\ufeffdata" is an unknown field.
    assert parse_stream(bom + bom + b"data: a\n\ndata: b\n\n") == [SSEMessage("message", "b", "")]


def test_id_with_nul_ignored_and_id_persists() -> None:
    raw = b"id: 7\ndata: a\n\nid: 8\x009\ndata: b\n\ndata: c\n\nid:\ndata: d\n\n"
    assert parse_stream(raw) == [
        SSEMessage("message", "a", "7"),
        SSEMessage("message", "b", "7"),
        SSEMessage("message", "c", "7"),
        SSEMessage("message", "d", ""),
    ]


def test_retry_digits_only_and_unknown_fields_ignored() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 3000\n\nretry: 12x\n\nretry: -1\n\nfoo: bar\ndata: z\n\n")
    assert parser.retry == 3000
    assert parser.close() == []


def test_event_type_resets_after_dispatch_and_without_data_no_dispatch() -> None:
    assert parse_stream(b"event: x\n\ndata: 1\n\nevent: y\ndata: 2\n\ndata: 3\n\n") == [
        SSEMessage("message", "1", ""),
        SSEMessage("y", "2", ""),
        SSEMessage("message", "3", ""),
    ]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse_stream(b"data: a\xffb\n\n") == [SSEMessage("message", "a\ufffdb", "")]


def test_field_without_colon_and_colon_in_value() -> None:
    assert parse_stream(b"data\ndata:a:b: c\n\n") == [SSEMessage("message", "\na:b: c", "")]


_pieces = st.lists(
    st.sampled_from(
        [
            b"data: x",
            b"data",
            b"id: 1",
            b"id: \x00",
            b"event: e",
            b": c",
            b"retry: 5",
            b"",
            b"\r",
            b"\n",
            b"\r\n",
            "\u00e9".encode(),
            b"\xff",
            "\ufeff".encode(),
        ]
    ),
    max_size=40,
)


@given(_pieces, st.integers(min_value=1, max_value=9))
def test_chunking_never_changes_the_result(pieces: list[bytes], size: int) -> None:
    raw = b"".join(pieces)
    assert parse_stream(raw, chunk_size=size) == parse_stream(raw)
