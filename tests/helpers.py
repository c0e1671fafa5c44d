"""Helpers several test modules share: the CLI as a user runs it, and a fixed set of chat requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REQUESTS = [
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Give a tip for sleeping well.",
    "Translate 'good morning' into French.",
    "List two prime numbers.",
    "Describe a cat in one sentence.",
    "Why is the sky blue?",
]

# `isheep eval` runs every decision set unless told not to: tests of other paths skip the second set
# and the knowledge probe.
NO_SECOND_SETS = ("--heldout-prompts", "0", "--knowledge", "0")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`isheep ARGS` in a fresh process, from `cwd`, with this checkout on the path."""
    return subprocess.run(
        [sys.executable, "-m", "isheep_lite", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def conversations() -> list[list[dict[str, str]]]:
    """REQUESTS as single-turn chats."""
    return [[{"role": "user", "content": q}] for q in REQUESTS]


def same_texts(a: list, b: list) -> int:
    """How many completions of two runs over the same requests are identical."""
    return sum(x.text == y.text for x, y in zip(a, b))
