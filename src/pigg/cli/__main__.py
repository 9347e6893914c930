"""`python -m pigg.cli`: the `pigg` command."""

from pigg.cli import main

main()
