"""A stand-in for vLLM's OpenAI server process, for the default suite's lifecycle tests of
`matrix.llm.served_folder`: started by `LocalServer` through a fake vLLM interpreter
(`fake_vllm_python`, set as MATRIX_VLLM_PYTHON), it takes vLLM's command line (--model,
--served-model-name, --port; the rest ignored), lists the model with its folder as `root`
like vLLM does, and answers every chat with "served: <last message>". With
FAKE_VLLM_DIE_AT=n it writes an engine error to its log and exits on the n-th chat request,
as a vLLM whose engine fails mid-step does; with FAKE_VLLM_FAIL_START=1 it exits before it
listens, as a vLLM that cannot load its model does. Real vLLM is the `server`-marked tests' job.
Standard library only: the server's environment has no PYTHONPATH."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STUB = Path(__file__).resolve()


def fake_vllm_python(tmp: Path) -> Path:
    """An executable that runs `-m vllm.entrypoints.openai.api_server ...` as this stub and
    anything else (vLLM's build probe) with the test's interpreter."""
    exe = tmp / "fake-vllm-python"
    exe.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ]; then shift 2; exec {sys.executable} {STUB} "$@"; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    exe.chmod(0o755)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--served-model-name", required=True)
    ap.add_argument("--port", type=int, required=True)
    args, _ = ap.parse_known_args()
    if os.environ.get("FAKE_VLLM_FAIL_START"):
        print("ValueError: fake model that cannot load", flush=True)
        sys.exit(1)
    die_at = int(os.environ.get("FAKE_VLLM_DIE_AT", "0"))
    seen = {"chats": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            # one write per line, under the lock: the handler threads' lines never interleave
            with lock:
                sys.stdout.write(f"{self.command} {self.path}\n")
                sys.stdout.flush()

        def _send(self, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            model = {"id": args.served_model_name, "object": "model", "root": args.model}
            self._send({"object": "list", "data": [model]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen["chats"] += 1
                if die_at and seen["chats"] >= die_at:
                    print("RuntimeError: fake engine failure", flush=True)
                    os._exit(1)
            text = "served: " + body["messages"][-1]["content"]
            usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
            choice = {"index": 0, "finish_reason": "stop"}
            choice["message"] = {"role": "assistant", "content": text}
            self._send(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [choice],
                    "usage": usage,
                }
            )

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
