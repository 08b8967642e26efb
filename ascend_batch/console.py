"""The ``ascend-batch`` console script's entry point. It imports the command line only when called:
multiprocessing's spawned workers re-run the script that started them (as ``__mp_main__``, without
calling it), and so skip importing typer and every command (about 45 ms of CPU per worker)."""

from __future__ import annotations


def main() -> None:
    from .cli import main as cli_main

    cli_main()
