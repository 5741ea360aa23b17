"""`ihlab-probe`: induction heads in pretrained Hugging Face causal LMs (Crosbie & Shutova)."""
