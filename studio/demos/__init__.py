"""Bundled demo models (digits CNN, MiniLM). These modules may import torch; studio.core never does."""
