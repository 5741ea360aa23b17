"""Models solved numerically beside the trained ones (Singh et al.'s interacting subcircuits)."""
