"""Pure ranking functions: per-channel similarities -> one score per item -> top k.

Channels stored per item (see index/README.md): ``image`` (shared space), ``text`` (shared space, only
items with text) and, for models with ``visual_channel``, ``visual`` (raw backbone features).

Score of an item for a query (all similarities are cosines of unit vectors, i.e. inner products):

    image part  I = cos(q_visual, item.visual)  if the index has a visual channel
                  = cos(q_image,  item.image)   otherwise
    text part   T = (1 - a) * cos(q_text, item.image) + a * cos(q_text, item.text)   item with text
                  = cos(q_text, item.image)                                          item without text
    score       = I (photo only) | T (text only) | w * I + (1 - w) * T (photo + text)

with ``w`` the image weight and ``a`` the item-text weight. For a single channel this is exactly the
sum fusion ``normalize(w * img + (1 - w) * txt)`` searched against that channel (same ranking, scores
scaled by the norm of the mix). Models with a learned fusion instead score ``cos(fuse(q_image, q_text),
item.image)`` for photo + text queries.
"""

from __future__ import annotations

import numpy as np


def text_part(txt_img: np.ndarray, txt_txt: np.ndarray, has_text: np.ndarray, item_text_weight: float) -> np.ndarray:
    """T for each candidate: blend of text-vs-image and text-vs-item-text similarity (see module doc)."""
    a = float(item_text_weight)
    return np.where(has_text, (1.0 - a) * txt_img + a * txt_txt, txt_img)


def combine(image_part: np.ndarray | None, text_part_: np.ndarray | None, image_weight: float) -> np.ndarray:
    """w * I + (1 - w) * T, or whichever part is present."""
    if image_part is None and text_part_ is None:
        raise ValueError("a query needs an image part, a text part, or both")
    if text_part_ is None:
        return image_part  # type: ignore[return-value]
    if image_part is None:
        return text_part_
    w = float(image_weight)
    return w * image_part + (1.0 - w) * text_part_


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, scores), best first; ties broken by id so results are deterministic."""
    k = min(k, len(scores))
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]
