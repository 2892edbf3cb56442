"""How the CLI presents itself: `--version`, and help without a type after on/off flags."""

from __future__ import annotations

from typing import Any, Optional

import typer


def hide_flag_types() -> None:
    """Help without a type after on/off flags: typer >= 0.20 prints `--int8 <bool>`, as if the flag took a value.

    typer has no setting for it; its option class's `display_type_rich` is wrapped once (a no-op
    on typer releases without that method).
    """
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "edgekd_flags_hidden", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Optional[str]:
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    display_type_rich.edgekd_flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def print_version(value: bool) -> None:
    """The `--version` callback: `edgekd 0.1.0`, exit 0."""
    if value:
        from edgekd import __version__

        typer.echo(f"edgekd {__version__}")
        raise typer.Exit()
