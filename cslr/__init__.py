"""CSLR Experiment Platform: config.yaml -> validated Docker Compose project -> running stack.

`tasks.py` (Invoke) is a thin shell over this package; every module here is importable and
testable without Docker.
"""

__version__ = "0.1.0"
