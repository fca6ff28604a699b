"""`python -m workers` is the `failover` command."""

from workers.operations.cli import main

main()
