"""Utilities every layer uses, importing no other matrix package: atomic files and resumable
JSONL logs (`io`), the user-fixable ConfigError (`validation`), bad-row accounting
(`bad_rows`), secrets, and progress bars (`progress`)."""
