"""Which server URLs are on this machine: a local server needs no API key (preflight and the
OpenAI backend both skip it), and an unreachable local server's error names its log and the
command that restarts it."""

from __future__ import annotations

from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def is_local(base_url: str) -> bool:
    """Whether `base_url`'s host is this machine (`http://[::1]:8000/v1` is; a host that only
    contains "localhost" in its name is not)."""
    return (urlsplit(base_url).hostname or "") in LOCAL_HOSTS
