"""The CLI's options, defined once: cli.py and the commands/ modules annotate their parameters with these."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

IndexOpt = Annotated[Path, typer.Option("--index", "-i", help="Index folder.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
WaitOpt = Annotated[float, typer.Option("--wait", min=0.0, help="Seconds to wait for another writer of the index.")]
IndexTypeOpt = Annotated[Optional[str], typer.Option(
    "--index-type", help="auto, flat, hnsw, ivf, ivfpq, or a FAISS factory string (default: the index's, else auto).")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", help="RAM budget for the ANN index, e.g. 512MB or 4GB (auto picks what fits).")]
WhereOpt = Annotated[Optional[list[str]], typer.Option(
    "--where", metavar="FIELD OP VALUE", help="Metadata filter, repeatable: category=shoes, 'price<50', brand!=acme, 'color in red,blue'.")]
TopKOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")]
ImageWeightOpt = Annotated[Optional[float], typer.Option(
    "--image-weight", "-w", min=0.0, max=1.0, help="Weight of the photo in a one-photo + one-text query "
    "[default: 0.5, the index's ranking setting].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON list of hits (rank, id, path, score, title, "
                                       "metadata).")]
PathsOpt = Annotated[bool, typer.Option("--paths", help="Print one absolute image path per line (for xargs, "
                                        "feh, cp).")]
Print0Opt = Annotated[bool, typer.Option("--print0", help="Like --paths, each path ended by a NUL byte instead "
                                         "of a newline (for xargs -0: a file name may hold a newline).")]
PreviewOpt = Annotated[bool, typer.Option("--preview", help="Show thumbnails (kitty, sixel terminals; else "
                                          "the table).")]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", help="Leave out hits scoring below this.")]
SortByOpt = Annotated[Optional[str], typer.Option("--sort-by", metavar="FIELD", help="Order the best --window hits by "
                                                  "score, id, title or a metadata field.")]
DescOpt = Annotated[bool, typer.Option("--desc", help="With --sort-by: largest / latest first.")]
OffsetOpt = Annotated[Optional[int], typer.Option("--offset", help="Skip this many hits of the ordered window (stable "
                                                  "pages: --offset 0, 10, 20 ...).")]
WindowOpt = Annotated[int, typer.Option("--window", help="Hits that --sort-by and --offset page through.")]
ModeOpt = Annotated[Optional[str], typer.Option("--mode", help="hybrid (keyword + semantic), semantic or keyword "
                                                "[default: hybrid for a text query when items have titles]")]
