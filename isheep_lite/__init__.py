"""isheep-lite: iterative self-alignment (I-SHEEP) of small LLMs on a CPU or one consumer GPU.

Heavy libraries (torch, transformers, trl, peft, llama_cpp, unsloth) are imported only inside the
functions that use them, so `import isheep_lite` and the CLI start fast.
"""

from .recipe import Recipe, UserError, load


def run(recipe: Recipe, force: bool = False):  # noqa: ANN201 - returns loop.RunStore
    """Run (or resume) the loop for a recipe; see `isheep_lite.loop`."""
    from . import loop

    return loop.run(recipe, force=force)


__all__ = ["Recipe", "UserError", "load", "run"]
__version__ = "0.1.0"
