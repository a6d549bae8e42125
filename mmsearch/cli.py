"""The ``mmsearch`` command line: the table of commands. Each command is a plain function in its own
module under commands/ (its options in commands/options.py); commands/boundary.py turns the typed errors
they raise into one red line and an exit code."""

from __future__ import annotations

import logging

import typer

from .commands import (
    dedupe,
    evaluate,
    export,
    index,
    info,
    listing,
    migrate,
    query,
    reindex,
    remove,
    serve,
    similar,
    train,
)
from .commands.boundary import ErrorBoundary
from .commands.options import VerboseOpt, VersionOpt

app = typer.Typer(cls=ErrorBoundary, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Multimodal image search: index a folder of images, query by text, photo, or both.")


@app.callback()
def _main(verbose: VerboseOpt = False, version: VersionOpt = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("faiss").setLevel(logging.WARNING)


# the order of `mmsearch --help`
app.command("index")(index.index)
app.command("query")(query.query)
app.command("info")(info.info)
app.command("serve")(serve.serve)
app.command("train")(train.train)
app.command("eval")(evaluate.evaluate)
app.command("remove")(remove.remove)
app.command("reindex")(reindex.reindex)
app.command("similar")(similar.similar)
app.command("list")(listing.list_items)
app.command("export")(export.export)
app.command("dedupe")(dedupe.dedupe)
app.command("migrate")(migrate.migrate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
