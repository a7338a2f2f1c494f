"""`python -m kdbench` is the `kdbench` command."""

from kdbench.cli import main

main()
