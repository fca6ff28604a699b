"""The Celery app where `celery -A workers ...` looks for it, as Celery's own layout suggests.

It is built in `workers.runtime.app`, beside the tasks it runs; this module only names it.
"""

from workers.runtime.app import app

__all__ = ["app"]
