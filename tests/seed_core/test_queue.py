import pytest
import torch

from seed_core.queue import EmbeddingQueue


def _batch(start, n, dim=2):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_fifo_order_and_pointer():
    q = EmbeddingQueue(6, 2)
    q.enqueue(_batch(0, 2))
    q.enqueue(_batch(2, 2))
    assert q.embeddings[:4, 0].tolist() == [0, 1, 2, 3]
    assert int(q.ptr) == 4


def test_wrap_around_when_size_not_multiple_of_batch():
    q = EmbeddingQueue(5, 2)
    for start in (0, 3, 6):  # 9 entries through a queue of 5, batch of 3
        q.enqueue(_batch(start, 3))
    # entries 0..8 written in order; slot = index mod 5, so the last 5 (4..8) remain
    assert sorted(q.embeddings[:, 0].tolist()) == [4, 5, 6, 7, 8]
    assert q.embeddings[:, 0].tolist() == [5, 6, 7, 8, 4]
    assert int(q.ptr) == 9 % 5


def test_state_dict_round_trip_and_too_large_batch():
    q = EmbeddingQueue(4, 3)
    q.enqueue(torch.ones(3, 3))
    r = EmbeddingQueue(4, 3, torch.Generator().manual_seed(9))
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.embeddings, q.embeddings) and int(r.ptr) == 3
    with pytest.raises(ValueError, match="cannot enqueue 5"):
        q.enqueue(torch.ones(5, 3))
