"""The example application served by ``python main.py``."""
