"""Photo domains for ``build_corpus.py``: the openly licensed photographs in ``../shared/photos/``
(see ``../shared/DATA.md``), each set with ``items.jsonl`` and ``LICENSE-NOTES.md``.

- ``photo-clothing`` (``clothing-cc0``, CC0 1.0): home snapshots of garments and shoes, 17 labels; title =
  the lower-cased label ("t-shirt", "outwear"), tag ``kids`` for the kids' rows (same class, same split);
- ``photo-caltech`` (``caltech101-ccby``, CC BY 4.0, cite doi:10.22002/D1.20086): objects and animals,
  90 classes; title = the readable class name ("hedgehog", "bass (fish)");
- ``photo-coco`` (``coco-mini-ccby``, images CC BY / BY-SA 2.0, captions CC BY 4.0): 51 photos with 5
  human captions each; **evaluation only** (every row in ``test-photo-coco``); title = the first caption.

Clothing and Caltech are split **by class** (``sha256("photo:" + label)[:8] % 100 < TEST_SHARE`` -> test,
else train; no validation rows), so a held-out class is never trained on. Every row carries evaluation
queries by kind (``queries``: kind -> texts; ``bench_lodo.py`` scores each kind apart):

- ``caption``: sentences. COCO: its five human captions; the others: ``CAPTION_TEMPLATES`` on the name;
- ``paraphrase``: WordNet (Debian ``wordnet-base``) lemmas of the name's first noun synset and of its direct
  hypernyms ("hedgehog" -> "Erinaceus europaeus", "insectivore"), when ``--wordnet`` is given.

Training rows get ``captions`` (title, "a photo of a {title}", the WordNet synonyms, not the hypernyms:
a hypernym shared by two classes would be a false negative in a contrastive batch).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

PHOTO_DOMAINS = ("photo-clothing", "photo-caltech", "photo-coco")
SETS = {"photo-clothing": "clothing-cc0", "photo-caltech": "caltech101-ccby", "photo-coco": "coco-mini-ccby"}
TEST_SHARE = 25  # percent of the classes held out
CAPTION_TEMPLATES = ("a photo of a {}.", "there is a {} in this picture")
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "photos"


def photo_split(label: str) -> str:
    """train / test by class: a held-out class has no training image."""
    return "test" if int(hashlib.sha256(f"photo:{label}".encode()).hexdigest()[:8], 16) % 100 < TEST_SHARE \
        else "train"


class WordNet:
    """Noun synonyms and hypernym lemmas from the WordNet 3.0 database files (``index.noun``, ``data.noun``)."""

    def __init__(self, root: Path):
        dict_dir = next((p for p in (root, root / "usr/share/wordnet", root / "dict") if (p / "index.noun").is_file()),
                        None)
        if dict_dir is None:
            raise FileNotFoundError(f"no WordNet index.noun under {root} (unpack Debian wordnet-base there)")
        self.index: dict[str, list[int]] = {}
        for line in (dict_dir / "index.noun").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" "):
                continue
            f = line.split()
            n_ptr = int(f[3])
            n_syn = int(f[2])
            self.index[f[0]] = [int(x) for x in f[4 + n_ptr + 2:4 + n_ptr + 2 + n_syn]]
        self.data = (dict_dir / "data.noun").read_bytes()

    def _synset(self, offset: int) -> tuple[list[str], list[int]]:
        end = self.data.index(b"\n", offset)
        f = self.data[offset:end].decode("utf-8", "replace").split("|")[0].split()
        n_words = int(f[3], 16)
        words = [f[4 + 2 * k].replace("_", " ") for k in range(n_words)]
        words = [re.sub(r"\(.*\)$", "", w) for w in words]
        p = 4 + 2 * n_words
        n_ptr = int(f[p])
        hyper = [int(f[p + 1 + 4 * k + 1]) for k in range(n_ptr) if f[p + 1 + 4 * k] in ("@", "@i")]
        return words, hyper

    def lookup(self, name: str) -> tuple[list[str], list[str]]:
        """(synonyms, hypernym lemmas) of ``name``'s first noun synset; both empty when unknown."""
        key = re.sub(r"\s*\(.*\)|,.*$", "", name).strip().lower().replace(" ", "_").replace("'", "")
        # a plural class name ("shoes") is looked up as its singular first ("shoes" alone is "situation")
        singular = key[:-1] if key.endswith("s") and not key.endswith("ss") else None
        offsets = (self.index.get(singular or "") or self.index.get(key)
                   or self.index.get(key.replace("-", "_")))
        if not offsets:
            return [], []
        words, hyper = self._synset(offsets[0])
        low = name.lower()
        syn = [w for w in dict.fromkeys(words) if w.lower() != low and w.lower() != key.replace("_", " ")]
        hyp = [w for h in hyper for w in self._synset(h)[0][:2]]
        return syn, [w for w in dict.fromkeys(hyp) if w.lower() not in {s.lower() for s in syn} | {low}]


def read_items(root: Path, domain: str) -> list[dict]:
    path = root / SETS[domain] / "items.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (--photos should hold {', '.join(SETS.values())})")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def add_photos(corpus, root: Path, domain: str, wordnet: WordNet | None, limit: int = 0) -> dict[str, int]:
    """Rows of one photo set into ``corpus`` (``build_corpus.Corpus``); returns images per folder."""
    items = read_items(root, domain)
    per_class: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    words: dict[str, tuple[list[str], list[str]]] = {}
    for it in items:
        if domain == "photo-coco":
            caps = list(it.get("captions") or [it["text"]])
            title, label, split, tags = caps[0], f"coco:{it.get('coco_id', it['file'])}", "test", []
            queries = {"caption": caps}
            captions = caps
        else:
            label = str(it["label"])
            title = label.lower() if domain == "photo-clothing" else it["text"]
            tags = ["kids"] if it.get("kids") else []
            split = photo_split(f"{domain}:{label}")
            if limit and per_class[label] >= limit:
                continue
            per_class[label] += 1
            if title not in words:
                words[title] = wordnet.lookup(title) if wordnet else ([], [])
            syn, hyp = words[title]
            queries = {"caption": [t.format(title) for t in CAPTION_TEMPLATES]}
            if syn or hyp:
                queries["paraphrase"] = syn + hyp
            captions = [title, CAPTION_TEMPLATES[0].format(title)] + syn
        folder = "train" if split == "train" else f"test-{domain}"
        src = root / SETS[domain] / "images" / it["file"]
        name = f"{domain}-" + hashlib.sha256(it["file"].encode()).hexdigest()[:12]
        corpus.add(folder, src, name, title, tags, domain.split("-", 1)[1], f"{domain}:{label}", "photo",
                   domain, ext="jpg", captions=list(dict.fromkeys(captions)))
        corpus.rows[folder][-1]["queries"] = queries
        counts[folder] += 1
    return dict(counts)
