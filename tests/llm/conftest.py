"""The server fixture lives in tests/conftest.py (one server for the whole session)."""

from tests.conftest import free_port  # noqa: F401  (imported by the error tests)
