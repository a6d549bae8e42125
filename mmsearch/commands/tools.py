"""CLI commands over what an index holds: ``similar``, ``list``, ``export``, ``dedupe``.

Registered on the Typer app by cli.py (``register``), so cli.py stays a thin list of commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import MMSearchError
from .options import DeviceOpt, IndexOpt, WhereOpt


def register(app: typer.Typer, fail: Callable[[MMSearchError], typer.Exit], out: Console, err: Console) -> None:
    """Add the commands to ``app``; ``fail`` turns a domain error into one red line and its exit code."""

    def open_engine(index: Path, device: str = "cpu", where: Optional[list[str]] = None):
        from ..index.filters import parse_where
        from ..search.engine import SearchEngine

        conditions = parse_where(where) if where else None
        return SearchEngine.open(index, device=device, lazy_model=True), conditions  # loaded if a query needs it

    @app.command("similar")
    def similar_cmd(
        item_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Id(s) of indexed items (see "
                                                      "`mmsearch list`): results resemble all of them.")],
        not_ids: Annotated[Optional[list[str]], typer.Option("--not", metavar="ID", help="An item the results "
                                                             "should not resemble; repeatable.")] = None,
        index: IndexOpt = Path("index"),
        k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")] = 10,
        text: Annotated[Optional[str], typer.Option("--text", help="A text that steers the results.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of hits.")] = False,
        paths: Annotated[bool, typer.Option("--paths", help="Print one absolute image path per line.")] = False,
        print0: Annotated[bool, typer.Option("--print0", help="Like --paths, NUL-terminated (for xargs -0).")] = False,
        preview: Annotated[bool, typer.Option("--preview", help="Show thumbnails where the terminal can.")] = False,
        where: WhereOpt = None,
        device: DeviceOpt = "auto",
    ) -> None:
        """More like this (or these): items whose images resemble every ID and none of --not (given ids left out)."""
        from .output import check_modes, check_print0, print_hits

        try:
            mode = check_modes(as_json, check_print0(print0, paths, as_json, preview), preview)
            engine, conditions = open_engine(index, device, where)
            hits = engine.search_similar(item_ids[0] if len(item_ids) == 1 else item_ids, text=text, k=k,
                                         where=conditions, not_ids=not_ids or ())
        except MMSearchError as exc:
            raise fail(exc)
        print_hits(hits, mode, out, err, print0=print0)

    @app.command("list")
    def list_cmd(
        index: IndexOpt = Path("index"),
        where: WhereOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of items (id, path, title, text, "
                                              "metadata).")] = False,
        paths: Annotated[bool, typer.Option("--paths", help="Print one absolute image path per line.")] = False,
        print0: Annotated[bool, typer.Option("--print0", help="Like --paths, NUL-terminated (for xargs -0).")] = False,
    ) -> None:
        """List the indexed items with their metadata (all, or those matching --where)."""
        from ..search.tools import list_items
        from .output import check_print0, print_paths

        try:
            paths = check_print0(print0, paths, as_json)
            engine, conditions = open_engine(index, where=where)
            items = list_items(engine, conditions)
        except MMSearchError as exc:
            raise fail(exc)
        if as_json:
            print(json.dumps(items, ensure_ascii=False))
        elif paths:
            print_paths([it["path"] for it in items], err, print0)
        else:
            table = Table(title=f"{len(items)} items", title_justify="left")
            for col in ("id", "title", "metadata"):
                table.add_column(col, overflow="fold")
            for it in items:
                meta = ", ".join(f"{k}={_short(v)}" for k, v in it["metadata"].items())
                table.add_row(it["id"], it["title"], meta)
            out.print(table)

    @app.command("export")
    def export_cmd(
        out_path: Annotated[Path, typer.Option("--out", "-o", help="A .parquet file (needs pyarrow), or a folder for "
                                               "embeddings.npy + text_embeddings.npy + items.jsonl.")],
        index: IndexOpt = Path("index"),
        where: WhereOpt = None,
    ) -> None:
        """Export ids, paths, metadata and embeddings, for pandas or another engine."""
        from ..search.tools import export_index

        try:
            engine, conditions = open_engine(index, where=where)
            n = len(engine) if conditions is None else len(engine.select(conditions))
            written = export_index(engine, out_path, conditions)
        except MMSearchError as exc:
            raise fail(exc)
        out.print(f"[bold green]Exported {n} items[/] to {written}", highlight=False)

    @app.command("dedupe")
    def dedupe_cmd(
        index: IndexOpt = Path("index"),
        threshold: Annotated[float, typer.Option("--threshold", "-t", min=-1.0, max=1.0, help="Cosine similarity "
                                                 "of two images from which they count as duplicates.")] = 0.92,
        kind: Annotated[str, typer.Option("--kind", help="all, exact (byte-identical copies only) or near "
                                          "(groups with at least one near-duplicate).")] = "all",
        where: WhereOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of groups ({ids, paths, scores, "
                                              "kinds, kind}).")] = False,
    ) -> None:
        """Groups of copies: exact (same file content, marked =) and near-duplicates (similarity shown)."""
        from ..search.tools import find_duplicates

        try:
            engine, conditions = open_engine(index, where=where)
            groups = find_duplicates(engine, threshold, conditions, kind=kind)
        except MMSearchError as exc:
            raise fail(exc)
        if as_json:
            print(json.dumps(groups, ensure_ascii=False))
            return
        if not groups:
            out.print(f"No duplicates ({kind}) at similarity >= {threshold}.")
            return
        n = sum(len(g["ids"]) for g in groups)
        n_exact = sum(g["kind"] == "exact" for g in groups)
        out.print(f"{len(groups)} group(s) of duplicates ({n} items; {n_exact} group(s) of exact copies, "
                  f"{len(groups) - n_exact} with near-duplicates at similarity >= {threshold}):")
        for g in groups:
            out.print(f"  {g['ids'][0]}", highlight=False)
            for iid, score, k in zip(g["ids"][1:], g["scores"][1:], g["kinds"][1:]):
                out.print(f"    {'=    ' if k == 'exact' else f'{score:.3f}'}  {iid}", highlight=False)


def _short(v: Any, width: int = 40) -> str:
    s = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"
