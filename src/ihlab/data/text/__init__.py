"""The text data family (family.py) and its parts: where the text comes from (corpus.py), its
tokenizer (tokenizer.py) and the tokenized corpus on disk (cache.py)."""

from ihlab.data.text import family  # noqa: F401  (registers the family)
