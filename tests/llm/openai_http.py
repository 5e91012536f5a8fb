"""A small OpenAI-compatible HTTP server, in process, for the default suite: `/v1/models`,
`/v1/chat/completions` and `/v1/completions` over real HTTP (the openai SDK talks to it as
to vLLM), with a scripted "model": a chat is answered "chat: <last message>", a raw prompt is
continued with "user request <seed>: <a topic>" (so sampled copies differ). It records every request.
The real server (vLLM) is the `llm_server` fixture, for tests marked `server`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from matrix.llm.ledger import CHARS_PER_TOKEN

# what a raw prompt's continuation asks about, by its seed (rows far apart for dedup filters)
TOPICS = [
    "how do volcanoes form?",
    "write a haiku about jazz",
    "explain sourdough fermentation",
    "what is an orbital transfer?",
    "list three medieval castles",
    "how are capital gains taxed?",
    "why do coral reefs bleach?",
    "suggest a chess opening for beginners",
]


def answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The scripted model's answer to a POST of `body` to `path`."""
    if path.endswith("/chat/completions"):
        prompt = "".join(m["content"] for m in body["messages"])
        text = "chat: " + body["messages"][-1]["content"]
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    else:
        seed = body.get("seed", 0)
        prompt, text = body["prompt"], f"user request {seed}: {TOPICS[seed % len(TOPICS)]}"
        choice = {"text": text}
        if body.get("logprobs"):
            choice["logprobs"] = {"tokens": ["user"], "top_logprobs": [{"user": -0.1, "a": -2.5}]}
    return {
        "id": "x",
        "object": "chat.completion" if "message" in choice else "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", **choice}],
        "usage": {
            "prompt_tokens": -(-len(prompt) // CHARS_PER_TOKEN),
            "completion_tokens": 3,
            "total_tokens": -(-len(prompt) // CHARS_PER_TOKEN) + 3,
        },
    }


def send_json(handler: BaseHTTPRequestHandler, obj: dict) -> None:
    data = json.dumps(obj).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class OpenAIHTTPServer:
    """`with OpenAIHTTPServer("m") as s:` serves model "m" at `s.base_url`; `s.posts` lists
    (path, body) of every POST."""

    def __init__(self, model: str):
        self.model = model
        self.posts: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                models = {"object": "list", "data": [{"id": outer.model, "object": "model"}]}
                send_json(self, models)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.path, body))
                send_json(self, answer(self.path, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIHTTPServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
