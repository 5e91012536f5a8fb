"""Up-front config validation: collect every problem, then fail once with all of them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config or input problem a user can fix; the message names the key or file.
    `problems` holds the (key, message) pairs when it reports several at once."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class ConfigProblems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def check(self, ok: bool, key: str, message: str) -> bool:
        if not ok:
            self.add(key, message)
        return ok

    def extend(self, other: ConfigProblems) -> None:
        self.items.extend(other.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, stage: str) -> None:
        if self.items:
            lines = "\n".join(f"  - {k}: {m}" for k, m in self.items)
            raise ConfigError(
                f"{stage}: {len(self.items)} config problem(s):\n{lines}", list(self.items)
            )
