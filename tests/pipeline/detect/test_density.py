"""The latent-space density term: exact k-NN distances, robust scaling, and how the detector combines them."""

import numpy as np
import pytest

from pipeline.detect.density import LatentKNN, reference_rows, robust_scale


def test_knn_distance_is_the_exact_kth_nearest_distance():
    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    brute = np.sort(np.linalg.norm(q[:, None, :] - ref[None, :, :], axis=2), axis=1)
    for k in (1, 5):
        assert np.allclose(LatentKNN(ref, k).distance(q), brute[:, k - 1])


def test_knn_distance_is_zero_on_a_reference_row_and_k_is_clipped():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    knn = LatentKNN(ref, k=10)
    assert knn.k == 2
    assert np.allclose(LatentKNN(ref, 1).distance(ref), 0.0)
    assert np.allclose(knn.distance(np.array([[0.0, 0.0]])), [5.0])
    assert knn.distance(np.zeros((0, 2))).shape == (0,)
    # a code the encoder overflowed on is infinitely far: the row's score is not finite and gets named
    assert np.array_equal(knn.distance(np.array([[np.nan, 0.0], [np.inf, 1.0], [3.0, 4.0]])), [np.inf, np.inf, 5.0])


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="latent k must be >= 1, got 0"):
        LatentKNN(np.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match=r"non-empty \(m, d\) array, got shape \(0, 2\)"):
        LatentKNN(np.zeros((0, 2)), 1)


def test_robust_scale_is_the_median_and_interquartile_range():
    assert robust_scale(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == (3.0, 2.0)
    assert robust_scale(np.full(4, 7.0)) == (7.0, 1.0)  # nothing to scale by
    assert robust_scale(np.zeros(0)) == (0.0, 1.0)


def test_robust_scale_falls_back_to_the_mean_absolute_deviation_when_most_values_tie():
    # validation rows with twins: most leave-one-out distances are 0, so the IQR is 0
    v = np.array([0.0] * 8 + [1.0, 3.0])
    median, spread = robust_scale(v)
    assert median == 0.0 and spread == pytest.approx(1.69 * 0.4)
    # the term stays on the scale of the others instead of blowing up 1e12-fold
    assert (np.array([2.0]) - median) / spread < 10


def test_reference_rows_keep_everything_below_the_cap_and_subsample_seeded_above():
    assert np.array_equal(reference_rows(5, seed=0, cap=10), np.arange(5))
    a, b = reference_rows(100, seed=3, cap=10), reference_rows(100, seed=3, cap=10)
    assert np.array_equal(a, b) and len(np.unique(a)) == 10 and np.all(np.diff(a) > 0)


@pytest.mark.parametrize("dim", [2, 15, 32, 33, 64, 1568])
def test_knn_distance_is_exact_in_any_dimension_up_to_float32(dim):
    rng = np.random.default_rng(dim)
    ref, q = rng.normal(size=(300, dim)), rng.normal(size=(40, dim)) * 1.5
    knn = LatentKNN(ref, 3)
    brute = np.sort(np.linalg.norm(q[:, None, :] - ref[None, :, :], axis=2), axis=1)
    assert np.allclose(knn.distance(q), brute[:, 2], rtol=1e-5)
    assert np.allclose(knn.distance(q, rank=4), brute[:, 3], rtol=1e-5)  # another rank, same index
    assert np.allclose(knn.distance(q, rank=1000), brute[:, -1], rtol=1e-5)  # clipped to the 300 codes
    assert np.array_equal(knn.distance(q), LatentKNN(ref, 3).distance(q))  # deterministic


def _search_in_child(q) -> None:
    import traceback

    try:
        from pipeline.detect.density import search_pool

        q.put(search_pool().submit(lambda: 42).result(timeout=20))
    except BaseException:
        q.put(traceback.format_exc())


def test_search_pool_runs_work_in_a_forked_child_too():
    import multiprocessing as mp

    from pipeline.detect.density import search_pool

    assert search_pool().submit(lambda: 1).result(timeout=20) == 1  # the parent's thread exists now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_search_in_child, args=(q,))
    child.start()
    got = q.get(timeout=30)  # a pool left over from the parent would never run the work: this would time out
    child.join(30)
    # (not its exit code: after a session-wide Prefect test server, a forked child's shutdown can exit 1)
    assert got == 42


def test_references_whose_code_overflowed_under_any_vae_are_left_out_of_every_vae():
    from pipeline.detect.density import finite_references

    pick = np.array([0, 2, 5, 7])
    a = np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0], [2.0, 2.0]])
    b = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [np.nan, 2.0]])
    own, (ka, kb) = finite_references(8, pick, [a, b])
    assert np.flatnonzero(own).tolist() == [0, 5]
    assert ka.tolist() == [[0.0, 1.0], [1.0, 1.0]] and kb.tolist() == ka.tolist()
    same, codes = finite_references(8, pick[:2], [a[[0, 2]], b[[0, 2]]])  # all finite: kept as they are
    assert np.flatnonzero(same).tolist() == [0, 2] and np.array_equal(codes[0], a[[0, 2]])
