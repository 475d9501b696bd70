"""``python -m acsl_cli`` (and ``torchrun -m acsl_cli``) runs the CLI."""

from acsl_cli.cli import main

main()
