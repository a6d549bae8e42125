"""Every option and argument of the CLI, defined once, each with one help text: the command modules
annotate their parameters with these (``index: IndexOpt = Path("index")``); defaults stay with the
parameters. A flag that means different things in different commands (``--json`` of hits, of a manifest,
of groups) is a different option here, named for what it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..index.backend import index_location


def _print_version(value: bool) -> None:
    if value:
        from .._version import __version__

        print(f"mmsearch {__version__}")
        raise typer.Exit()


# ------------------------------------------------------------------------------------------ the app itself
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]
VersionOpt = Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")]

# ------------------------------------------------------------------------------------------ shared
IndexOpt = Annotated[Path, typer.Option("--index", "-i", parser=index_location,
                                        help="Index folder, or milvus-lite:FILE.db or milvus://HOST:PORT/COLLECTION.")]
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

# ------------------------------------------------------------------------------------------ output modes
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON list of hits (rank, id, path, score, title, "
                                       "metadata).")]
PathsOpt = Annotated[bool, typer.Option("--paths", help="Print one absolute image path per line (for xargs, "
                                        "feh, cp).")]
Print0Opt = Annotated[bool, typer.Option("--print0", help="Like --paths, each path ended by a NUL byte instead "
                                         "of a newline (for xargs -0: a file name may hold a newline).")]
PreviewOpt = Annotated[bool, typer.Option("--preview", help="Show thumbnails (kitty, sixel terminals; else "
                                          "the table).")]
ItemsJsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON list of items (id, path, title, text, "
                                            "metadata).")]
ManifestJsonOpt = Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")]
GroupsJsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON list of groups ({ids, paths, scores, "
                                             "kinds, kind}).")]
TableJsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# ------------------------------------------------------------------------------------------ query
QueryArgs = Annotated[Optional[list[str]], typer.Argument(
    metavar="[PHOTO|TEXT]...", help="Photos and texts, in any order. W:X weights a term (2:a.jpg); "
    "'cat + a.jpg - blurry' adds and subtracts terms.")]
ImageOpt = Annotated[Optional[list[str]], typer.Option("--image", metavar="[W:]PATH", help="Query photo, "
                                                       "repeatable.")]
TextOpt = Annotated[Optional[list[str]], typer.Option("--text", metavar="[W:]TEXT", help="Query text, "
                                                      "repeatable.")]
NotOpt = Annotated[Optional[list[str]], typer.Option("--not", metavar="[W:]PHOTO|TEXT", help="A photo or text "
                                                     "the results should not look like, repeatable.")]
BatchOpt = Annotated[Optional[Path], typer.Option("--batch", help="JSONL file of queries, one per line; prints "
                                                  "one JSON object per query.")]
NoServerOpt = Annotated[bool, typer.Option("--no-server", help="Search in this process even when a "
                                           "`mmsearch serve` of this index is running.")]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", help="Leave out hits scoring below this.")]
SortByOpt = Annotated[Optional[str], typer.Option("--sort-by", metavar="FIELD", help="Order the best --window hits by "
                                                  "score, id, title or a metadata field.")]
DescOpt = Annotated[bool, typer.Option("--desc", help="With --sort-by: largest / latest first.")]
OffsetOpt = Annotated[Optional[int], typer.Option("--offset", help="Skip this many hits of the ordered window (stable "
                                                  "pages: --offset 0, 10, 20 ...).")]
WindowOpt = Annotated[int, typer.Option("--window", help="Hits that --sort-by and --offset page through.")]
ModeOpt = Annotated[Optional[str], typer.Option("--mode", help="hybrid (keyword + semantic), semantic or keyword "
                                                "[default: hybrid for a text query when items have titles]")]
UpdateOpt = Annotated[bool, typer.Option("--update", help="First bring the index up to date with its catalog "
                                         "folder (instant when nothing changed).")]

# ------------------------------------------------------------------------------------------ similar
ItemIdsArg = Annotated[list[str], typer.Argument(metavar="ID...", help="Id(s) of indexed items (see "
                                                 "`mmsearch list`): results resemble all of them.")]
NotIdOpt = Annotated[Optional[list[str]], typer.Option("--not", metavar="ID", help="An item the results "
                                                       "should not resemble; repeatable.")]
SteerTextOpt = Annotated[Optional[str], typer.Option("--text", help="A text that steers the results.")]

# ------------------------------------------------------------------------------------------ index, reindex, remove
CatalogArg = Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")]
IndexOutOpt = Annotated[Path, typer.Option("--index", "-i", "--out", "-o", parser=index_location,
                                           help="Where to write the index: a folder, or milvus-lite:FILE.db or "
                                           "milvus://HOST:PORT/COLLECTION (--out/-o: the older name).")]
FromIndexArg = Annotated[Path, typer.Argument(help="The folder index to copy (its stored embeddings: nothing is "
                                               "encoded again).")]
IndexModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (default, bridge, tiny) or "
                          "checkpoint path (default: the existing index's model, else default).")]
IndexBatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="Decoding processes.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the image tower (pays off for "
                                          "large catalogs, mostly on GPU).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Re-encode everything instead of updating.")]
ShardSizeOpt = Annotated[int, typer.Option("--shard-size", min=1, help="Under torchrun: images per work slice "
                                           "(the unit that a re-run resumes from).")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", metavar="GLOB", help="Files and folders "
                       "never to index, relative to CATALOG ('private/**', '*.tmp.jpg'); repeatable. Remembered "
                       "in the index: later updates honour it; indexed items it matches are removed.")]
ResetExcludeOpt = Annotated[bool, typer.Option("--reset-exclude", help="Forget the --exclude patterns the index "
                                               "remembers (only this run's apply).")]
WatchOpt = Annotated[bool, typer.Option("--watch", help="Keep updating the index as CATALOG changes, until Ctrl-C "
                                        "(needs mmsearch[watch]).")]
DebounceOpt = Annotated[float, typer.Option("--debounce", min=0.0, help="With --watch: seconds of quiet after a "
                                            "change before updating.")]
RemoveIdsArg = Annotated[list[str], typer.Argument(help="Item ids (catalog-relative paths) to remove.")]

# ------------------------------------------------------------------------------------------ info, export, dedupe
CheckOpt = Annotated[bool, typer.Option("--check/--no-check", help="Verify every file against the "
                                        "manifest's checksums (exit 1 if damaged).")]
ExportOutOpt = Annotated[Path, typer.Option("--out", "-o", help="A .parquet file (needs pyarrow), or a folder for "
                                            "embeddings.npy + text_embeddings.npy + items.jsonl.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", "-t", min=-1.0, max=1.0, help="Cosine similarity "
                                             "of two images from which they count as duplicates.")]
DupKindOpt = Annotated[str, typer.Option("--kind", help="all, exact (byte-identical copies only) or near "
                                         "(groups with at least one near-duplicate).")]

# ------------------------------------------------------------------------------------------ serve
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on; other than loopback needs "
                                      "--api-key.")]
PortOpt = Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="MMSEARCH_API_KEY",
                                                  help="Key clients send in the X-API-Key header.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback address without a key.")]
MaxUploadOpt = Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest request body.")]
MaxPendingOpt = Annotated[int, typer.Option("--max-pending", min=1, help="Searches admitted at once; "
                                            "more get 503 + Retry-After.")]
ReloadIntervalOpt = Annotated[float, typer.Option("--reload-interval", min=0.0, help="Seconds between checks "
                                                  "for a rebuilt index (0: only POST /reload).")]
ServeConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="ServeCfg JSON file; flags given on the "
                                                        "command line win.")]

# ------------------------------------------------------------------------------------------ train, eval
TrainCatalogArg = Annotated[Path, typer.Argument(help="Training catalog (items with a title/text are the pairs).")]
TrainModelOpt = Annotated[str, typer.Option("--model", "-m", help="Config to train from scratch (default, tiny) or a "
                                                                  "checkpoint to fine-tune.")]
RunDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (metrics, checkpoints).")]
TrainConfigOpt = Annotated[Optional[str], typer.Option("--config", help="Train config: a name in "
                                                       "mmsearch/train/configs/ or a JSON file.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (max, with early stopping).")]
TrainBatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=2, help="Pairs per step.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
FusionOpt = Annotated[Optional[str], typer.Option("--fusion", help="Replace the model's fusion: sum, concat, "
                                                  "gated, combiner.")]
UnfreezeOpt = Annotated[Optional[int], typer.Option("--unfreeze", min=0, help="Also train the last N blocks of each "
                                                    "backbone (at lr x backbone_lr_scale; no feature cache). "
                                                    "0: frozen backbones, features cached.")]
AugViewsOpt = Annotated[Optional[int], typer.Option("--aug-views", min=0, help="Image augmentation: cached "
                                                    "augmented views per image (frozen backbones), any N > 0 "
                                                    "augments on the fly with --unfreeze; 0 = off.")]
WiseAlphaOpt = Annotated[Optional[float], typer.Option("--wise-alpha", min=0.0, max=1.0, help="WiSE-FT: save "
                                                       "(1 - a) x the starting weights + a x the trained ones "
                                                       "(1 = off).")]
ComposedOpt = Annotated[Optional[Path], typer.Option("--composed", help="Triplets JSONL: reference, text, target.")]
ValOpt = Annotated[Optional[Path], typer.Option("--val", help="Validation catalog (early stopping on Recall@10).")]
ValComposedOpt = Annotated[Optional[Path], typer.Option("--val-composed", help="Validation triplets JSONL.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")]
EvalQueriesArg = Annotated[Path, typer.Argument(help='Queries JSONL: {"image": path|null, "text": str|null, '
                                                     '"target": [ids]} per line.')]
