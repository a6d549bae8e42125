"""``mmsearch eval``: Recall@k and MRR of a queries file on an index (mmsearch/evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from .options import DeviceOpt, EvalQueriesArg, ImageWeightOpt, IndexOpt, TableJsonOpt
from .output import out


def evaluate(queries: EvalQueriesArg, index: IndexOpt = Path("index"), image_weight: ImageWeightOpt = None,
             as_json: TableJsonOpt = False, device: DeviceOpt = "auto") -> None:
    """Recall@1/5/10/50 and MRR of QUERIES on an index, per query type, with 95% bootstrap intervals."""
    from ..evaluate import evaluate as evaluate_index

    res = evaluate_index(index, queries, device=device, image_weight=image_weight)
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
