from matrix.llm.protocol import LLM, Chat, Completion, Message, Sampling

__all__ = ["LLM", "Chat", "Completion", "Message", "Sampling"]
