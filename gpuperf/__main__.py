"""``python -m gpuperf`` runs the command line."""

from gpuperf.cli import main

main()
