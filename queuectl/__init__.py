"""queuectl: a background job queue for shell commands whose whole state is a directory tree."""

__version__ = "0.1.0"
