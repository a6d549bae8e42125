"""How the CLI prints hits: a table (default), ``--json``, ``--paths`` (one absolute path per line, for
``xargs`` / ``feh`` / ``cp``) or ``--preview`` (thumbnails in terminals with an image protocol)."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

PREVIEW_HINT = "pip install 'mmsearch[preview]'"

out = Console(soft_wrap=True)  # what a command prints (rich resolves sys.stdout / sys.stderr at each print)
err = Console(stderr=True, soft_wrap=True)  # warnings and the error boundary's one red line


def hit_dict(h: Any) -> dict[str, Any]:
    """The fields of one hit in every JSON output (single queries, --batch lines, similar)."""
    return {"rank": h.rank, "id": h.id, "path": h.path, "score": round(float(h.score), 6), "title": h.title,
            "metadata": h.metadata}


def check_modes(as_json: bool, paths: bool, preview: bool) -> str:
    """The one output mode asked for: "json", "paths", "preview" or "table"."""
    modes = [name for name, on in (("json", as_json), ("paths", paths), ("preview", preview)) if on]
    if len(modes) > 1:
        from ..errors import QueryError

        raise QueryError(f"choose one output: --{' or --'.join(modes)}")
    return modes[0] if modes else "table"


def check_print0(print0: bool, paths: bool, as_json: bool = False, preview: bool = False) -> bool:
    """``--print0`` is ``--paths`` with NUL terminators; it goes with no other output mode."""
    if print0 and (as_json or preview):
        from ..errors import QueryError

        raise QueryError("--print0 prints paths; it cannot be combined with --json or --preview")
    return paths or print0


def print_paths(paths: Sequence[str], print0: bool = False) -> None:
    """One path per line, or NUL-terminated with ``print0`` (``xargs -0``): a name may hold a newline."""
    if print0:
        sys.stdout.write("".join(f"{p}\0" for p in paths))
        return
    if any("\n" in p or "\r" in p for p in paths):
        err.print("[yellow]Warning:[/] a path holds a line break and spans two lines here; use --print0 "
                  "(with xargs -0) to keep it whole", highlight=False)
    sys.stdout.write("".join(f"{p}\n" for p in paths))


def print_hits(hits: Sequence[Any], mode: str, empty: str = "No results.", print0: bool = False) -> None:
    if mode == "json":
        print(json.dumps([hit_dict(h) for h in hits], ensure_ascii=False))
        return
    if mode == "paths":
        print_paths([h.path for h in hits], print0)
        return
    if not hits:
        out.print(empty)
        return
    if mode == "preview":
        image_cls, why = preview_renderer()
        if image_cls is not None:
            out.print(preview_table(hits, image_cls))
            return
        err.print(f"[yellow]No preview:[/] {why}; showing the table.", highlight=False)
    out.print(hits_table(hits, out.width))


MIN_TITLE = 12  # narrower than this, the title column is left out rather than squeezed


def hits_table(hits: Sequence[Any], width: int | None = None) -> Table:
    """rank, score, id, title; the id is never cut (it is what `similar` and `remove` take): it keeps its
    full width, the title wraps, and on a terminal too narrow for both the title is left out."""
    longest = max((len(str(h.id)) for h in hits), default=2)
    # rank (4) + score (5) + the id, plus the borders and padding of three columns (10)
    id_fits = width is None or 4 + 5 + longest + 10 <= width
    with_title = width is None or 4 + 5 + longest + 10 + 3 + MIN_TITLE <= width
    table = Table(title=f"{len(hits)} results", title_justify="left")
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    # fold (every character shown, over two lines) only when even the id alone is wider than the terminal
    table.add_column("id", min_width=longest if id_fits else None, no_wrap=id_fits, overflow="fold")
    if with_title:
        table.add_column("title", overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.id, *([h.title] if with_title else []))
    return table


def preview_renderer() -> tuple[Any, str]:
    """(the textual-image renderable for this terminal, "") or (None, why there is no preview).

    Only real image protocols count (kitty's graphics protocol, sixel: xterm, WezTerm, foot, iTerm2 3.5+);
    block-character art is not a preview worth the space, so other terminals get the table.
    """
    if not sys.stdout.isatty():
        return None, "standard output is not a terminal"
    try:
        from textual_image.renderable import sixel, tgp
    except ImportError:
        return None, f"the textual-image package is not installed ({PREVIEW_HINT})"
    if sixel.query_terminal_support():
        return sixel.Image, ""
    if tgp.query_terminal_support():
        return tgp.Image, ""
    return None, "this terminal supports neither the kitty graphics protocol nor sixel"


def preview_table(hits: Sequence[Any], image_cls: Any) -> Table:
    table = Table(title=f"{len(hits)} results", title_justify="left", show_lines=True)
    for col in ("", "rank", "score", "id / title"):
        table.add_column(col)
    for h in hits:
        try:
            thumb: Any = image_cls(h.path, width=16, height=8)
        except Exception as exc:  # an unreadable file still gets its row
            thumb = f"({type(exc).__name__})"
        table.add_row(thumb, str(h.rank), f"{h.score:.3f}", f"{h.id}\n{h.title}")
    return table
