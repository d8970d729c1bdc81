"""InferHub Desktop: a LAN's workstations share their GPUs as one Ollama-compatible pool."""

__version__ = "0.1.0"
