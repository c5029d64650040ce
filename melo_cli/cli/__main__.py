"""`python -m melo_cli.cli`: the melo command."""

from melo_cli.cli.main import main

main()
