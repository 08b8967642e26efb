"""Model specs: what file to run and how to prepare its input."""

from .spec import ModelSpec, load_labels

__all__ = ["ModelSpec", "load_labels"]
