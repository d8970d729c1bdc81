"""Ask a model through a local API with the anthropic SDK (Messages, as Claude Code does) and the OpenAI
SDK (Responses), whole and streamed, greedily; print one JSON line per call with the text it read.

python tests/lan/scripts/sdk_client.py http://127.0.0.1:11435 MODEL
"""

from __future__ import annotations

import json
import sys

import anthropic
import openai

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
TOKENS = 24
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def main() -> int:
    host, model = sys.argv[1:]
    with anthropic.Anthropic(base_url=host, api_key="unused", max_retries=0) as claude:
        greedy = {"temperature": 0, "seed": 1}
        whole = claude.messages.create(model=model, max_tokens=TOKENS, messages=MESSAGES, extra_body=greedy)  # type: ignore[arg-type]
        report("messages", "".join(b.text for b in whole.content if b.type == "text"))
        with claude.messages.stream(
            model=model, max_tokens=TOKENS, messages=MESSAGES, extra_body=greedy
        ) as stream:  # type: ignore[arg-type]
            report("messages stream", "".join(stream.text_stream))
        # A call forced by name, which llama-cpp-python constrains to the tool's arguments.
        called = claude.messages.create(
            model=model,
            max_tokens=40,
            messages=WEATHER,  # type: ignore[arg-type]
            tools=[{"name": "get_weather", "input_schema": SCHEMA}],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "get_weather"},
            extra_body=greedy,
        )
        [use] = [b for b in called.content if b.type == "tool_use"]
        report("messages tool", json.dumps({use.name: use.input}))
    with openai.OpenAI(base_url=f"{host}/v1", api_key="unused", max_retries=0) as sdk:
        asked = {"model": model, "input": MESSAGES, "temperature": 0, "max_output_tokens": TOKENS}
        report("responses", sdk.responses.create(**asked).output_text)  # type: ignore[call-overload]
        events = list(sdk.responses.create(**asked, stream=True))  # type: ignore[call-overload]
        report("responses stream", "".join(e.delta for e in events if e.type == "response.output_text.delta"))
        called = sdk.responses.create(
            model=model,
            input=WEATHER,  # type: ignore[arg-type]
            tools=[{"type": "function", "name": "get_weather", "parameters": SCHEMA}],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=40,
        )
        [call] = called.output
        report("responses tool", json.dumps({call.name: json.loads(call.arguments)}))  # type: ignore[union-attr]
    return 0


def report(call: str, text: str) -> None:
    print(json.dumps({"call": call, "text": text}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
