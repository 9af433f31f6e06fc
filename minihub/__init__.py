"""minihub: a multi-user Jupyter notebook hub in one Python process."""

__version__ = "0.1.0"
