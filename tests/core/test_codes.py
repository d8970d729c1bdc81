"""Invite codes: 80 bits a person can type, every single typo and swap of neighbours caught."""

from __future__ import annotations

import pytest

from inferhub_desktop.core import ConfigError, join_code, new_secret, read_join_code
from inferhub_desktop.core.codes import _ALPHABET

SECRET = bytes.fromhex("0123456789abcdef0123")


def test_a_code_carries_its_secret_and_forgives_case_spaces_and_look_alikes() -> None:
    code = join_code(SECRET)
    assert len(code) == 21
    assert code.count("-") == 4
    assert read_join_code(code) == SECRET
    assert read_join_code(f"  {code.lower().replace('-', ' ')} ") == SECRET
    assert read_join_code(code.replace("0", "o").replace("1", "l")) == SECRET
    for _ in range(50):
        secret = new_secret()
        assert read_join_code(join_code(secret)) == secret


def test_every_single_typo_and_every_swap_of_neighbours_is_caught() -> None:
    code = join_code(SECRET).replace("-", "")
    for position in range(len(code) - 1):
        for symbol in _ALPHABET:
            if symbol != code[position]:
                with pytest.raises(ConfigError, match="typo"):
                    read_join_code(code[:position] + symbol + code[position + 1 :])
        if code[position] != code[position + 1] and position < len(code) - 2:
            swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
            with pytest.raises(ConfigError, match="typo"):
                read_join_code(swapped)


@pytest.mark.parametrize(("code", "message"), [("ABCD-EFGH", "has 8"), ("UUUU-UUUU-UUUU-UUUU-0", "has no U")])
def test_a_code_that_cannot_be_one_says_why(code: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_join_code(code)
