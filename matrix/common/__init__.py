"""Utilities every stage uses: atomic files and resumable JSONL logs (`io`), bad-row
accounting (`bad_rows`), the sentence encoder (`embeddings`), prompt templates (`prompts`)
and progress bars (`progress`)."""
