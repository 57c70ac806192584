"""Tool similarity: batched pooling equals one tool at a time; a tool is its own nearest neighbour."""

import numpy as np

from toolattn.similarity import neighbour_rank, tool_similarity, tool_vectors


def test_batched_equals_one_by_one(tiny, tools):
    batched = tool_vectors(tiny, tools, batch_size=4)
    single = np.concatenate([tool_vectors(tiny, [t], batch_size=1) for t in tools])
    assert np.allclose(batched, single, atol=1e-4), np.abs(batched - single).max()


def test_similarity_matrix(tiny, tools):
    s = tool_similarity(tiny, tools)
    assert s.shape == (len(tools), len(tools))
    assert np.allclose(np.diag(s), 1.0, atol=1e-5) and np.allclose(s, s.T, atol=1e-6)
    # a pair's similarity does not depend on the other tools compared (standardised over the catalog)
    assert np.allclose(tool_similarity(tiny, tools[:3]), s[:3, :3], atol=1e-5)
    ranks = sorted(neighbour_rank(s, 0, j) for j in range(1, len(tools)))
    assert ranks == list(range(1, len(tools)))
