"""``mmsearch dedupe``: groups of exact copies and near-duplicates in an index (search/tools.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .options import DupKindOpt, GroupsJsonOpt, IndexOpt, ThresholdOpt, WhereOpt
from .output import out


def dedupe(index: IndexOpt = Path("index"), threshold: ThresholdOpt = 0.92, kind: DupKindOpt = "all",
           where: WhereOpt = None, as_json: GroupsJsonOpt = False) -> None:
    """Groups of copies: exact (same file content, marked =) and near-duplicates (similarity shown)."""
    from ..search.tools import find_duplicates
    from .open_index import open_index

    engine, conditions = open_index(index, where=where)
    groups = find_duplicates(engine, threshold, conditions, kind=kind)
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
