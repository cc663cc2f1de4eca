"""``python -m sim.cli``: the same as the ``sim`` console script."""

from sim.cli import main

main()
