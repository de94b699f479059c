"""grouping.py: connected components, and average-linkage groups that do not chain."""

from __future__ import annotations

import numpy as np

from samespace import grouping


def test_connected_groups_are_transitive_components_largest_first() -> None:
    # 0~1 and 1~2 (0 and 2 not a pair) -> one group; 3~4; 5 and 6 alone; 7~8~9~10 a chain
    left = np.array([0, 1, 3, 7, 8, 9])
    right = np.array([1, 2, 4, 8, 9, 10])
    groups = grouping.connected_groups(11, left, right)
    assert [g.tolist() for g in groups] == [[7, 8, 9, 10], [0, 1, 2], [3, 4]]
    assert grouping.connected_groups(3, np.zeros(0, np.int64), np.zeros(0, np.int64)) == []


def _scores(matrix: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.array(matrix)
    left, right = np.triu_indices(len(m), k=1)
    return left, right, m[left, right]


def test_a_chain_of_unlike_ends_is_split() -> None:
    """A~B (0.95) and B~C (0.90) are above the threshold 0.85, A and C are unlike (0.30): not one group."""
    left, right, scores = _scores([[1, 0.95, 0.30], [0.95, 1, 0.90], [0.30, 0.90, 1]])
    strong = scores >= 0.85
    assert [g.tolist() for g in grouping.connected_groups(3, left[strong], right[strong])] == [[0, 1, 2]]
    score_fn = lambda i, j: np.array([[1, 0.95, 0.30], [0.95, 1, 0.90], [0.30, 0.90, 1]])[i, j]  # noqa: E731
    for fn in (score_fn, None):  # A~C scored on demand (0.30), or unknown and counted as unlike
        groups = grouping.linked_groups(3, left[scores >= 0.85], right[scores >= 0.85], scores[scores >= 0.85], 0.85,
                                        score_fn=fn)
        assert [g.tolist() for g in groups] == [[0, 1]]  # the strongest link wins; C is alone


def test_a_group_alike_on_average_is_kept_whole() -> None:
    # Three photos of one room: A~C is just under the threshold, but C is like {A, B} on average (0.85).
    matrix = [[1, 0.95, 0.80, 0.1], [0.95, 1, 0.90, 0.1], [0.80, 0.90, 1, 0.1], [0.1, 0.1, 0.1, 1]]
    left, right, scores = _scores(matrix)
    groups = grouping.linked_groups(4, left, right, scores, 0.85)
    assert [g.tolist() for g in groups] == [[0, 1, 2]]
    # Two rooms bridged by one weak link (2~3 at 0.86): two groups, not one chain of four.
    matrix = [[1, 0.95, 0.2, 0.2], [0.95, 1, 0.2, 0.2], [0.2, 0.2, 1, 0.97], [0.2, 0.2, 0.97, 1]]
    matrix[1][2] = matrix[2][1] = 0.86
    left, right, scores = _scores(matrix)
    groups = grouping.linked_groups(4, left, right, scores, 0.85)
    assert sorted(g.tolist() for g in groups) == [[0, 1], [2, 3]]
    assert grouping.linked_groups(4, left, right, scores, 0.99) == []


def test_a_component_above_the_cap_is_split_at_its_weakest_links() -> None:
    # Two cliques of 4 (scores 0.95) joined by one link at 0.90, and a chain of 5 identical photos (1.0):
    # with a cap of 4 the bridge is cut (each clique one group); the identical chain cannot be split by any
    # score and stays one group; a 3-member component under the cap is grouped by linkage as usual.
    left, right, scores = [], [], []
    for base in (0, 4):
        for i in range(4):
            for j in range(i + 1, 4):
                left.append(base + i), right.append(base + j), scores.append(0.95)
    left.append(3), right.append(4), scores.append(0.90)
    for i in range(10, 14):
        left.append(i), right.append(i + 1), scores.append(1.0)
    left += [20, 21, 20]
    right += [21, 22, 22]
    scores += [0.95, 0.95, 0.90]
    args = (30, np.array(left), np.array(right), np.array(scores), 0.85)
    groups = [g.tolist() for g in grouping.linked_groups(*args, max_component=4)]
    assert groups == [[10, 11, 12, 13, 14], [0, 1, 2, 3], [4, 5, 6, 7], [20, 21, 22]]
    # Without the cap: the same cliques; the chain's unscored pairs count as unlike, so linkage splits it.
    uncapped = [g.tolist() for g in grouping.linked_groups(*args)]
    assert uncapped == [[0, 1, 2, 3], [4, 5, 6, 7], [20, 21, 22], [10, 11], [12, 13]]
    pieces, whole = grouping.split_component(np.arange(8), np.array(left[:13]), np.array(right[:13]),
                                             np.array(scores[:13]), 0.85, 4)
    assert [p.tolist() for p in pieces] == [[0, 1, 2, 3], [4, 5, 6, 7]] and whole == []


def test_cut_gives_fclusters_partition_of_average_linkage_trees() -> None:
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(3)
    for _ in range(50):
        m = int(rng.integers(2, 30))
        tree = linkage(rng.random(m * (m - 1) // 2), method="average")
        for height in (0.1, 0.3, 0.5, 0.8):
            expected, got = fcluster(tree, t=height, criterion="distance"), grouping.cut_tree(tree, m, height)
            assert {frozenset(np.flatnonzero(expected == x)) for x in np.unique(expected)} == {
                frozenset(np.flatnonzero(got == x)) for x in np.unique(got)
            }


def test_same_group_says_which_pairs_end_in_one_group() -> None:
    groups = [np.array([0, 3]), np.array([1, 2, 4])]
    left, right = np.array([0, 0, 1, 2, 5, 4]), np.array([3, 1, 2, 4, 6, 5])
    assert grouping.same_group(7, groups, left, right).tolist() == [True, False, True, True, False, False]
    assert not grouping.same_group(3, [], np.array([0]), np.array([1])).any()
