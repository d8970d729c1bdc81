"""Chat and generate with a model through a local API using the official ollama client, whole and
streamed, greedily; print one JSON line per call with the text and the counts the client read.

python tests/lan/scripts/ollama_client.py http://127.0.0.1:11435 MODEL
"""

from __future__ import annotations

import json
import sys

import ollama

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
PROMPT = "Write the word blue."
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}


def main() -> int:
    host, model = sys.argv[1:]
    with ollama.Client(host=host) as client:
        chat = client.chat(model=model, messages=MESSAGES, options=GREEDY)
        report("chat", chat.message.content or "", chat)
        parts = list(client.chat(model=model, messages=MESSAGES, options=GREEDY, stream=True))
        report("chat stream", "".join(p.message.content or "" for p in parts), parts[-1], len(parts))
        generated = client.generate(model=model, prompt=PROMPT, options=GREEDY)
        report("generate", generated.response, generated)
        parts = list(client.generate(model=model, prompt=PROMPT, options=GREEDY, stream=True))
        report("generate stream", "".join(p.response for p in parts), parts[-1], len(parts))
    return 0


def report(
    call: str, text: str, final: ollama.ChatResponse | ollama.GenerateResponse, chunks: int = 1
) -> None:
    line = {
        "call": call,
        "text": text,
        "chunks": chunks,
        "done": final.done,
        "done_reason": final.done_reason,
        "eval_count": final.eval_count,
        "prompt_eval_count": final.prompt_eval_count,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
