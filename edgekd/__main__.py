"""`python -m edgekd` (and the `edgekd` command): the training / export / bench CLI."""

import sys


def main() -> None:
    """Run the CLI; on a runtime-only install say which extra is missing instead of a traceback."""
    try:
        from edgekd.cli import main as cli_main
    except ImportError as exc:  # typer, torch, ... come with the [train] extra
        if (exc.name or "").split(".")[0] in ("", "edgekd"):
            raise  # a broken edgekd module is a bug to show, not a missing extra
        print(f"error: the edgekd CLI needs the training stack ({exc.name or exc} is not installed): "
              "pip install 'edgekd[train]' (the device runtime is `edgekd-run`)", file=sys.stderr)
        sys.exit(1)
    cli_main()


if __name__ == "__main__":
    main()
