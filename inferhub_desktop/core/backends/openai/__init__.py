"""An OpenAI-compatible server as a backend (llama.cpp's llama-server, LM Studio, vLLM, TGI): the server
(server.py), what it lists under Ollama's names (models.py), and the translation of Ollama's requests
(requests.py) and of the server's replies (replies.py), which are pure functions tested on their own."""

from .models import ServedModel, ollama_name, served_models
from .server import OLLAMA_VERSION, OpenAIBackend

__all__ = ["OLLAMA_VERSION", "OpenAIBackend", "ServedModel", "ollama_name", "served_models"]
