"""`python -m workers` is the `failover` command."""

from workers.cli import main

main()
