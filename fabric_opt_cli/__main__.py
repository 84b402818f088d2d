"""``python -m fabric_opt_cli`` runs the ``fabric-opt`` command."""

from fabric_opt_cli.app import main

main()
