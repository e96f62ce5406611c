"""Domain errors. The core raises these; the CLI (queuectl/cli/) turns them into click errors."""

from __future__ import annotations


class QueueError(Exception):
    """Base class of every error queuectl reports to a user."""


class InvalidJob(QueueError):
    """A job spec or job file that is not a valid job."""


class DuplicateJob(InvalidJob):
    """A job id that already exists in some state directory."""


class JobNotFound(QueueError):
    """No job with this id in the states searched."""


class ConfigError(QueueError):
    """An unknown config key or a bad value."""


class SpoolError(QueueError):
    """The spool directory cannot be used (permissions, disk full, ...)."""


class WorkerError(QueueError):
    """Workers cannot be started or stopped."""


class WrongState(QueueError):
    """The job exists but its state does not allow this (cancel a completed job, kill a pending one)."""
