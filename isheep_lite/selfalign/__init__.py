"""Self-alignment: instructions and answers the model writes, its own grades, the rule filters."""
