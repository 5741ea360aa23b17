"""The command-line apps (Hydra): thin entry points over the library packages."""
