"""Engines: llama.cpp in-process, transformers, an OpenAI-compatible server, and what serves a model."""
