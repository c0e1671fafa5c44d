"""GGUF files: reading, chat templates, architectures, HF weights, export, the Ollama Modelfile."""
