"""`python -m athelas_migrate`: the same CLI as the `athelas-migrate` command."""

from .cli import main

main()
