"""Request bodies fail to decode with the messages Ollama's Go decoder gives."""

from __future__ import annotations

import pytest

from inferhub_desktop.core import ApiError
from inferhub_desktop.core.wire.payload import parse_body, string_field

GEN = "api.GenerateRequest"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b" \n\t", "missing request body"),
        (b"{bad", "invalid character 'b' looking for beginning of object key string"),
        (b"hello", "invalid character 'h' looking for beginning of value"),
        (b'{"model" "x"}', "invalid character '\\\"' after object key"),
        (b'{"model": "x" "y"}', "invalid character '\\\"' after object key:value pair"),
        (b"{'model': 1}", "invalid character '\\'' looking for beginning of object key string"),
        (b'{"model": "x', "unexpected EOF"),
        (b'{"model": ', "unexpected EOF"),
        (b'{"a": "\x01"}', "invalid character '\\x01' in string literal"),
        (b"[1, 2]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
        (b'"text"', "json: cannot unmarshal string into Go value of type api.GenerateRequest"),
        (b"3.5", "json: cannot unmarshal number into Go value of type api.GenerateRequest"),
    ],
)
def test_malformed_bodies_give_gos_message(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_body(body, GEN, openai=False)
    assert (caught.value.status, caught.value.message) == (400, message)


def test_openai_endpoints_report_an_empty_body_as_eof() -> None:
    with pytest.raises(ApiError, match=r"^EOF$"):
        parse_body(b"", "openai.ChatCompletionRequest", openai=True)


def test_only_the_first_value_counts_like_gos_decoder() -> None:
    assert parse_body(b'{"model": "llama3"} trailing', GEN, openai=False) == {"model": "llama3"}
    assert parse_body(b"null", GEN, openai=False) == {}


def test_fields_match_case_insensitively_and_check_their_type() -> None:
    assert string_field({"Model": "llama3"}, "model", GEN) == "llama3"
    assert string_field({"model": "a", "MODEL": "b"}, "model", GEN) == "a"
    assert string_field({"model": None}, "model", GEN) is None
    assert string_field({}, "model", GEN) is None
    with pytest.raises(ApiError, match=r"unmarshal number into Go struct field GenerateRequest\.model"):
        string_field({"model": 7}, "model", GEN)
