"""Evaluation: the checks a model is judged by."""
