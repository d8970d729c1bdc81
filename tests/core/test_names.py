"""Model names as Ollama matches them: defaults filled in, case folded."""

from __future__ import annotations

import pytest

from inferhub_desktop.core.names import model_key, short_name

LLAMA3 = "registry.ollama.ai/library/llama3:latest"


@pytest.mark.parametrize(
    "name",
    [
        "llama3",
        "llama3:latest",
        "library/llama3",
        "library/llama3:latest",
        "registry.ollama.ai/library/llama3",
        "registry.ollama.ai/library/llama3:latest",
        "https://registry.ollama.ai/library/llama3:latest",
        "LLaMA3",
        "Llama3:LATEST",
        "Registry.Ollama.AI/Library/LLAMA3:Latest",
        "  llama3  ",
    ],
)
def test_every_spelling_of_a_library_model_has_one_key(name: str) -> None:
    assert model_key(name) == LLAMA3
    assert short_name(model_key(name)) == "llama3:latest"


@pytest.mark.parametrize(
    "other",
    ["llama3:8b", "llama3.1", "someone/llama3", "other.host/library/llama3", "llama3:latest-q4"],
)
def test_a_different_tag_namespace_or_host_is_a_different_model(other: str) -> None:
    assert model_key(other) != model_key("llama3")


def test_a_tag_is_kept_and_folded() -> None:
    assert model_key("Qwen2.5:7B-Instruct") == "registry.ollama.ai/library/qwen2.5:7b-instruct"
    assert short_name(model_key("qwen2.5:7b-instruct")) == "qwen2.5:7b-instruct"


def test_a_namespaced_model_keeps_its_namespace_in_the_short_name() -> None:
    key = model_key("Someone/Model:Q4")
    assert key == model_key("registry.ollama.ai/someone/model:q4")
    assert short_name(key) == "someone/model:q4"
    assert model_key("someone/model") == model_key("someone/model:latest")


def test_a_host_with_a_port_is_not_taken_for_a_tag() -> None:
    key = model_key("host:5000/ns/model:tag")
    assert key == "host:5000/ns/model:tag"
    assert short_name(key) == "host:5000/ns/model:tag"
    assert model_key("host:5000/ns/model") == model_key("HOST:5000/ns/model:latest")
    assert model_key("host:5000/ns/model") != model_key("host/ns/model:5000")


def test_a_url_scheme_is_not_part_of_the_host() -> None:
    assert model_key("https://host:5000/ns/model:tag") == model_key("host:5000/ns/model:tag")


@pytest.mark.parametrize(
    "name",
    ["llama3", "someone/model:q4", "host:5000/ns/model:tag", "REGISTRY.OLLAMA.AI/x/y:Z"],
)
def test_keys_and_short_names_lead_back_to_the_same_key(name: str) -> None:
    key = model_key(name)
    assert model_key(key) == key
    assert model_key(short_name(key)) == key


@pytest.mark.parametrize("name", ["", "   ", ":tag", "Model:", "/model", "A//b", "ns/:tag", "a/b/"])
def test_an_invalid_name_keeps_a_stable_case_folded_key_of_its_own_text(name: str) -> None:
    key = model_key(name)
    assert key == name.strip().lower()
    assert model_key(name.upper()) == key
    assert model_key(f"  {name}  ") == key
    assert short_name(key) == key


def test_an_invalid_name_does_not_collide_with_a_valid_one() -> None:
    assert model_key("llama3:") != model_key("llama3")
    assert model_key("/llama3") != model_key("llama3")
