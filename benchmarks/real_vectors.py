"""Real embeddings for ``bench_query.py --vectors real``: the shared photos and the sample catalog, encoded once
by the shipped default model through the product's own path (``build_index``), then grown to any size by
small Gaussian noise.

    python benchmarks/real_vectors.py            # encode (or load the cache) and print what it holds
    python benchmarks/real_vectors.py --recall /tmp/mmsearch_bench/qindex_real_300000_all   # ANN vs exact
    python benchmarks/real_vectors.py --sweep /tmp/mmsearch_bench/qindex_real_300000_all    # nprobe vs recall

Photos: /work/shared/photos (clothing-cc0, caltech101-ccby, coco-mini-ccby; MMSEARCH_PHOTOS elsewhere), each
titled with its ``items.jsonl`` text (the label words, or the first COCO caption), so every item has the image,
visual and text channels as synthetic_index gives them. Every ``HOLDOUT``-th photo of each source is left out
of the index: those photos and their texts are the queries (with the sample's own query photos).
The embeddings are cached as ``real_<channel>.npy`` + ``real_meta.json`` under the bench cache dir.

Growing (``grow``): copy j of real item i is item i's vector plus Gaussian noise, renormalised, per channel,
with the noise scaled so that cos(copy, source) equals the median cosine of a real item to its nearest real
neighbour in that channel: a copy is as far from its source as real neighbours are from each other.
Copy 0 is the real vector itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(os.environ.get("MMSEARCH_PHOTOS", "/work/shared/photos"))
HOLDOUT = 50  # every 50th photo of each source is a query, not an item
CHANNELS = ("image", "visual", "text")


def corpus_items(photos: Path = PHOTOS, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """-> (items for build_index, held-out queries {"image", "text"})."""
    items, held = [], []
    for src in sorted(p for p in photos.iterdir() if (p / "items.jsonl").is_file()):
        rows = [json.loads(line) for line in (src / "items.jsonl").read_text().splitlines() if line.strip()]
        for n, r in enumerate(rows):
            path = src / "images" / r["file"]
            if not path.is_file():
                continue
            if n % HOLDOUT == HOLDOUT - 1:
                held.append({"image": str(path), "text": r["text"]})
            else:
                items.append({"id": f"{src.name}/{r['file']}", "image": str(path), "title": r["text"]})
    if limit is not None:
        step = max(1, len(items) // limit)
        items = items[::step][:limit]
    return items, held


def encode_corpus(cache: Path, limit: int | None = None) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """-> ({channel: (n, d) float16 unit rows, row i = item i}, titles, meta with the held-out queries)."""
    meta_path = cache / "real_meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("limit") == limit:
            vecs = {c: np.load(cache / f"real_{c}.npy") for c in meta["channels"]}
            return vecs, meta["titles"], meta
    from mmsearch import build_index
    from mmsearch.index.snapshot import channel_vectors

    cache.mkdir(parents=True, exist_ok=True)
    items, held = corpus_items(limit=limit)
    t0 = time.perf_counter()
    rep = build_index(items=items, out=cache / "real_photos_index", model="default", device="cpu", progress=True)
    photo_s = time.perf_counter() - t0
    print(f"  encoded {len(items)} photos in {photo_s:.0f} s ({len(items) / photo_s:.1f}/s): {rep}", flush=True)
    build_index(ROOT / "mmsearch" / "sample" / "catalog", out=cache / "real_sample_index", model="default",
                device="cpu", progress=False)
    titles_by_id = {it["id"]: it["title"] for it in items}
    vecs: dict[str, list[np.ndarray]] = {}
    titles: list[str] = []
    channels = list(CHANNELS)
    for idx in ("real_photos_index", "real_sample_index"):
        per = {}
        for c in CHANNELS:
            try:
                per[c] = channel_vectors(cache / idx, c)
            except FileNotFoundError:
                continue
        channels = [c for c in channels if c in per]
        ids = [i for i in per["image"] if all(i in per[c] for c in channels)]
        for c in channels:
            vecs.setdefault(c, []).append(np.stack([per[c][i] for i in ids]).astype(np.float16))
        titles += [titles_by_id.get(i, Path(i).stem.replace("_", " ")) for i in ids]
    out = {c: np.concatenate(vecs[c]) for c in channels}
    for c, v in out.items():
        np.save(cache / f"real_{c}.npy", v)
    sample_q = sorted(str(p) for p in (ROOT / "mmsearch" / "sample" / "queries").glob("*.jpg"))
    meta = {"limit": limit, "channels": channels, "titles": titles, "n_photos": len(items),
            "photo_encode_s": round(photo_s, 1), "photos_per_s": round(len(items) / photo_s, 1),
            "query_photos": sample_q + [h["image"] for h in held], "query_texts": [h["text"] for h in held]}
    meta_path.write_text(json.dumps(meta))
    return out, titles, meta


def nn_cosine(v: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Median cosine of a real item to its nearest other real item (on up to ``sample`` items)."""
    x = v.astype(np.float32)
    q = x[np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False)]
    sims = q @ x.T
    sims[sims > 0.9999] = -1.0  # itself (and exact duplicates)
    return float(np.median(sims.max(axis=1)))


def grow(real: dict[str, np.ndarray], n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """-> ({channel: (n, d) float16}, {channel: cos(copy, source)}); row r is a copy of real row r % len."""
    m = len(next(iter(real.values())))
    rng = np.random.default_rng(seed)
    out, cos = {}, {}
    for c, v in real.items():
        cos[c] = nn_cosine(v)
        sigma = np.sqrt(1.0 / cos[c] ** 2 - 1.0)  # |noise| = sigma: cos(v + noise, v) = 1 / sqrt(1 + sigma^2)
        d = v.shape[1]
        g = np.empty((n, d), np.float16)
        for s in range(0, n, 50_000):
            rows = np.arange(s, min(n, s + 50_000))
            x = v[rows % m].astype(np.float32)
            noisy = rows >= m  # copy 0: the real vector
            x[noisy] += sigma / np.sqrt(d) * rng.standard_normal((int(noisy.sum()), d), dtype=np.float32)
            g[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out[c] = g
    return out, cos


def query_recall(index: Path, photos: list[str], texts: list[str], k: int = 10) -> dict[str, float]:
    """Recall@k of each channel's tuned FAISS index against an exact scan, for the real held-out queries
    (photos: image + visual channels; texts: image + text channels), as the engine searches them; and the
    share of the exact top-k among the candidates the engine fetches and re-scores exactly."""
    from mmsearch.search.engine import SearchEngine

    eng = SearchEngine.open(index, device="cpu", verify=False)
    img = eng.encode_image_channels(photos)
    txt = eng.encode_texts(texts)
    out = {}
    for name, q, chans in (("photo", img, ("image", "visual")), ("text", {"image": txt, "text": txt}, ("image", "text"))):
        for c in chans:
            ch, qc = eng.backend.channels[c], np.asarray(q[c], np.float32)
            n_cand = max(eng.ranking.candidates, 4 * k)  # what the engine fetches before exact re-scoring
            cand = eng.backend.search(c, qc, n_cand)
            ann = cand[:, :k]
            exact = np.empty((len(qc), k), np.int64)
            for s in range(0, len(qc), 32):
                sims = np.concatenate([qc[s:s + 32] @ ch.vectors[r:r + 100_000].astype(np.float32).T
                                       for r in range(0, len(ch.ids), 100_000)], axis=1)
                exact[s:s + 32] = ch.ids[np.argsort(-sims, axis=1)[:, :k]]
            key = f"{name} query, {c} {ch.spec.factory} {ch.spec.params}"
            out[key + f" R@{k}"] = round(float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k
                                                      for a, e in zip(ann, exact)])), 4)
            out[key + f" exact top-{k} in the {n_cand} candidates"] = round(float(np.mean(
                [len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(cand, exact)])), 4)
    return out


def nprobe_sweep(index: Path, photos: list[str], texts: list[str], nprobes: list[int], k: int = 10) -> list[dict]:
    """Per channel and nprobe: R@k on the real held-out queries (photos -> visual, texts -> image) and the
    median batch-1 FAISS search time, single-threaded as the engine searches."""
    import faiss

    from mmsearch.search.engine import SearchEngine

    eng = SearchEngine.open(index, device="cpu", verify=False)
    qs = {"visual": np.asarray(eng.encode_image_channels(photos)["visual"], np.float32),
          "image": np.asarray(eng.encode_texts(texts), np.float32)}
    faiss.omp_set_num_threads(1)
    rows = []
    for c, q in qs.items():
        ch = eng.backend.channels[c]
        sims = np.concatenate([q @ ch.vectors[r:r + 100_000].astype(np.float32).T for r in range(0, len(ch.ids), 100_000)], 1)
        exact = ch.ids[np.argsort(-sims, axis=1)[:, :k]]
        ivf = faiss.extract_index_ivf(ch.index)
        for p in nprobes:
            ivf.nprobe = p
            times, hits = [], []
            for qi, e in zip(q, exact):
                t0 = time.perf_counter()
                _, got = ch.index.search(qi[None], k)
                times.append(time.perf_counter() - t0)
                hits.append(len(set(got[0].tolist()) & set(e.tolist())) / k)
            rows.append({"channel": c, "nprobe": p, "recall": round(float(np.mean(hits)), 3),
                         "faiss_ms_p50": round(float(np.median(times)) * 1e3, 2)})
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("MMSEARCH_SRC", str(ROOT)))
    cache_dir = Path(os.environ.get("MMSEARCH_BENCH_CACHE", "/tmp/mmsearch_bench"))
    if sys.argv[1:2] == ["--recall"]:  # --recall INDEX...: Recall@10 on the real held-out queries
        info = json.loads((cache_dir / "real_meta.json").read_text())
        for ix in sys.argv[2:]:
            print(ix, query_recall(Path(ix), info["query_photos"], sorted(set(info["query_texts"]))), flush=True)
        sys.exit(0)
    if sys.argv[1:2] == ["--sweep"]:  # --sweep INDEX: nprobe against recall on the real queries, and FAISS time
        info = json.loads((cache_dir / "real_meta.json").read_text())
        nprobe_sweep(Path(sys.argv[2]), info["query_photos"], sorted(set(info["query_texts"])), [1, 2, 4, 8, 16, 32, 64])
        sys.exit(0)
    lim = int(sys.argv[1]) if len(sys.argv) > 1 else None
    v, t, info = encode_corpus(cache_dir, lim)
    print({c: a.shape for c, a in v.items()}, len(t), {k: info[k] for k in ("n_photos", "photos_per_s")},
          len(info["query_photos"]), "query photos", len(info["query_texts"]), "query texts")
