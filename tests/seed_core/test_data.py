"""seed_core.data's collate: samples stacked into batches, in shared memory inside a worker."""
import torch

from seed_core.data import collate


def test_collate_stacks_views_and_patches_and_lists_the_skipped(monkeypatch):
    views = [torch.full((3, 4, 4), float(i)).permute(0, 2, 1) for i in range(3)]  # views need not be contiguous
    patches = [torch.full((2, 3, 2, 2), float(i)) for i in range(3)]
    images, bad = collate([(views[0], []), (views[1], [7]), (views[2], [8, 9])])
    assert torch.equal(images, torch.stack(views)) and bad == [7, 8, 9]
    (main, small), bad = collate([((v, p), []) for v, p in zip(views, patches)])
    assert torch.equal(main, torch.stack(views)) and torch.equal(small, torch.stack(patches)) and bad == []
    assert not images.is_shared()
    # In a data-loader worker the batch is stacked straight into shared memory, so that sending it
    # to the training process costs no second copy.
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    images, _ = collate([(v, []) for v in views])
    (main, small), _ = collate([((v, p), []) for v, p in zip(views, patches)])
    assert images.is_shared() and main.is_shared() and small.is_shared()
    assert torch.equal(images, torch.stack(views))
