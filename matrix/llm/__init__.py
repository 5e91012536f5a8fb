"""Everything that talks to a language model: the protocol (`protocol`), backends
(`hf` in-process, `openai_backend` for any OpenAI-compatible server, `vllm_backend`),
the embedded models (`embedded`), the sentence encoder (`embeddings`), role wrappers with
cache, budget and ledger (`roles`, `cache`, `ledger`), chat templates (`chat`), prompt
templates (`prompts`) and the local vLLM server launcher (`server`)."""

from matrix.llm.protocol import LLM, Chat, Completion, Message, Sampling

__all__ = ["LLM", "Chat", "Completion", "Message", "Sampling"]
