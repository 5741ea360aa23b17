"""The text data family's parts: where the text comes from (corpus.py), its tokenizer
(tokenizer.py) and the tokenized corpus on disk (cache.py)."""
