"""LoRA training on the kept pairs."""
