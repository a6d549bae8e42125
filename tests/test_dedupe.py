"""group_duplicates: exact copies by content hash apart from near-duplicates, groups linear in size."""

import numpy as np

from mmsearch.search.tools import group_duplicates


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_copies_and_near_duplicates_are_told_apart():
    rng = np.random.default_rng(0)
    base = unit(rng, 4)
    near = base[2] + 0.01 * unit(rng, 1)[0]
    x = np.vstack([base, base[0], near / np.linalg.norm(near)])  # row 4: copy of 0; row 5: near 2
    hashes = ["a", "b", "c", "d", "a", "e"]
    groups = sorted(group_duplicates(hashes, x, threshold=0.99))
    assert groups == [[(0, "exact"), (4, "exact")], [(2, "exact"), (5, "near")]]


def test_a_copy_of_a_near_duplicate_joins_its_group():
    rng = np.random.default_rng(1)
    a = unit(rng, 1)[0]
    b = a + 0.01 * unit(rng, 1)[0]
    x = np.vstack([a, b / np.linalg.norm(b), b / np.linalg.norm(b), unit(rng, 1)[0]])
    groups = group_duplicates(["h0", "h1", "h1", "h3"], x, threshold=0.99)
    assert groups == [[(0, "exact"), (1, "near"), (2, "near")]]  # kinds are relative to the first row


def test_exact_copies_link_even_when_their_vectors_differ():
    # the content hash decides for exact copies, whatever the (stored, float16) vectors say
    rng = np.random.default_rng(2)
    x = unit(rng, 3)
    assert group_duplicates(["s", "s", "t"], x, threshold=0.999) == [[(0, "exact"), (1, "exact")]]
    assert group_duplicates([None, None, None], x, threshold=0.999) == []  # no hash: vectors only


def test_a_huge_group_of_identical_images_is_one_group():
    # 20k byte-identical placeholders plus 3,000 near-identical re-encodes: one group, every member kept,
    # without the all-pairs step (20k x 20k pairs would be 4e8 links)
    rng = np.random.default_rng(3)
    v = unit(rng, 1)[0]
    noise = 1e-3 * rng.standard_normal((3000, v.size)).astype(np.float32)
    near = v + noise
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    x = np.vstack([np.tile(v, (20000, 1)), near, unit(rng, 50)])
    hashes = ["same"] * 20000 + [f"n{i}" for i in range(3000)] + [f"o{i}" for i in range(50)]
    groups = group_duplicates(hashes, x, threshold=0.99, neighbours=8)
    assert len(groups) == 1
    members = groups[0]
    assert len(members) == 23000 and [i for i, _ in members] == list(range(23000))
    assert sum(k == "exact" for _, k in members) == 20000
