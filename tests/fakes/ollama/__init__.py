"""A faithful fake of Ollama's HTTP API, for tests and benchmarks.

It serves the endpoints in shared/OLLAMA_API.md with Ollama's paths, methods, content types, status
codes, error bodies and stream framing, and exposes knobs that shape timing, limit concurrency like
Ollama's scheduler and inject faults. Behaviour follows Ollama's server/routes.go, server/sched.go and
middleware/openai.go, one area a module: wire.py (HTTP, errors, framing, CORS and Host checks),
models.py (names and listings), scheduler.py, inference.py, compat.py (/v1), manage.py, and server.py,
which puts them together. Run it as its own process with ``python -m tests.fakes.ollama --help``.
"""

from tests.fakes.base import RecordedRequest

from .models import FakeModel
from .server import FakeOllama

__all__ = ["FakeModel", "FakeOllama", "RecordedRequest"]
