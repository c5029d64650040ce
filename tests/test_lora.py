"""The rank-block mask: only the routed block changes a row, and only that block gets gradients."""

import pytest
import torch
from torch import nn

from melo_cli.model.lora import BlockLoRA, linear_dims
from melo_cli.router.vocabulary import NO_BLOCK
from melo_cli.model.route_scope import Routes


def make_layer(n_blocks=3, rank=2, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(6, 5)
    routes = Routes()
    layer = BlockLoRA(base, routes, rank_per_block=rank, alpha=4.0)
    layer.ensure_blocks(n_blocks)
    layer.lora_A = torch.randn_like(layer.lora_A)
    layer.lora_B = torch.randn_like(layer.lora_B)
    return layer, routes


def test_rows_without_a_route_are_exactly_the_base_output():
    layer, routes = make_layer()
    x = torch.randn(4, 7, 6)
    with routes.fixed(torch.tensor([NO_BLOCK, 1, NO_BLOCK, 2])):
        out = layer(x)
    base = layer.base(x)
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.allclose(out[1], base[1]) and not torch.allclose(out[3], base[3])


def test_no_scope_means_base_model():
    layer, _ = make_layer()
    x = torch.randn(2, 3, 6)
    assert torch.equal(layer(x), layer.base(x))


def test_a_row_uses_exactly_its_block():
    layer, routes = make_layer()
    x = torch.randn(2, 3, 6)
    with routes.fixed(torch.tensor([1, 1])):
        out = layer(x)
    a, b = layer.lora_A[1], layer.lora_B[1]
    expected = layer.base(x) + layer.scale * (x @ a.T @ b.T)
    torch.testing.assert_close(out, expected)


def test_changing_another_block_does_not_change_the_output():
    layer, routes = make_layer()
    x = torch.randn(3, 4, 6)
    ids = torch.tensor([0, 2, NO_BLOCK])
    with routes.fixed(ids):
        before = layer(x)
    layer.lora_A[1] += 10.0
    layer.lora_B[1] -= 3.0
    with routes.fixed(ids):
        after = layer(x)
    assert torch.equal(before, after)


def test_gradients_are_zero_outside_the_active_block():
    layer, routes = make_layer(n_blocks=4)
    pool_a = layer.lora_A.clone().requires_grad_(True)
    pool_b = layer.lora_B.clone().requires_grad_(True)
    layer.lora_A, layer.lora_B = pool_a, pool_b
    x = torch.randn(2, 3, 6)
    with routes.fixed(torch.tensor([2, NO_BLOCK])):
        layer(x).pow(2).sum().backward()
    for grad in (pool_a.grad, pool_b.grad):
        assert grad[2].abs().sum() > 0
        assert torch.count_nonzero(grad[[0, 1, 3]]) == 0


def test_training_block_is_separate_and_commit_leaves_other_blocks_bit_identical():
    layer, routes = make_layer(n_blocks=2)
    frozen = layer.lora_A.clone(), layer.lora_B.clone()
    params = layer.start_block(2, torch.Generator().manual_seed(1))
    assert layer.n_blocks == 3 and all(p.requires_grad for p in params)
    assert torch.count_nonzero(params[1]) == 0  # B starts at zero: the new block is a no-op
    optimizer = torch.optim.Adam(params, lr=0.1)
    x = torch.randn(3, 6)
    for _ in range(3):
        with routes.fixed(torch.tensor([2, 2, 0])):
            loss = layer(x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layer.commit_block()
    assert torch.equal(layer.lora_A[:2], frozen[0]) and torch.equal(layer.lora_B[:2], frozen[1])
    assert torch.equal(layer.lora_A[2], params[0].detach()[0]) and torch.count_nonzero(layer.lora_B[2]) > 0
    assert layer.train_block is None


def test_several_blocks_train_at_once_each_from_its_own_rows():
    """One block per edit: rows of one batch train different new blocks, and only their own."""
    layer, routes = make_layer(n_blocks=1)
    frozen = layer.lora_A.clone(), layer.lora_B.clone()
    a, b = layer.start_blocks(1, 3, torch.Generator().manual_seed(1))
    assert a.shape[0] == 3 and layer.n_blocks == 4
    with torch.no_grad():
        b.normal_()
    x = torch.randn(4, 6)
    with routes.fixed(torch.tensor([3, 1, 0, 3])):
        out = layer(x)
    out[1].sum().backward()  # row 1 uses block 1 only
    assert a.grad[0].abs().sum() > 0 and torch.count_nonzero(a.grad[1:]) == 0
    with routes.fixed(torch.tensor([3, 1, 0, 3])):
        expected = layer.base(x[0]) + layer.scale * (b[2].detach() @ (a[2].detach() @ x[0]))
        assert torch.allclose(layer(x)[0], expected, atol=1e-6)  # block 3 = the third opened
    layer.commit_block()
    assert torch.equal(layer.lora_A[:1], frozen[0]) and torch.equal(layer.lora_B[1:], b.detach())


def test_gpt2_conv1d_dims_follow_fan_in_fan_out():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=12, nx=5)  # weight is (in=5, out=12)
    assert linear_dims(conv) == (5, 12)
    routes = Routes()
    layer = BlockLoRA(conv, routes, rank_per_block=2)
    layer.start_block(0)
    with torch.no_grad():
        layer.train_B.normal_()
    x = torch.randn(2, 3, 5)
    with routes.fixed(torch.tensor([0, NO_BLOCK])):
        out = layer(x)
    assert out.shape == (2, 3, 12) and torch.equal(out[1], conv(x)[1])


def test_routes_are_per_thread_and_per_model():
    import threading

    a, b = Routes(), Routes()
    seen = {}
    with a.fixed(torch.tensor([1])):
        assert b.active() is None
        thread = threading.Thread(target=lambda: seen.setdefault("other", a.active()))
        thread.start()
        thread.join()
        assert a.active().block_ids.tolist() == [1]
    assert seen["other"] is None and a.active() is None


def test_nested_scopes_are_refused():
    routes = Routes()
    with routes.fixed(torch.tensor([0])):
        with pytest.raises(RuntimeError):
            with routes.fixed(torch.tensor([1])):
                pass


def test_growing_the_pool_keeps_every_block_and_adds_zero_blocks_without_copying_each_time():
    layer, routes = make_layer(n_blocks=3)
    kept_a, kept_b = layer.lora_A.clone(), layer.lora_B.clone()
    stores = set()
    for n in range(4, 40):
        layer.ensure_blocks(n)
        layer.lora_A[n - 1] = float(n)  # as commit_block writes a trained block
        stores.add(layer._store_A.data_ptr())
    assert layer.n_blocks == 39
    assert torch.equal(layer.lora_A[:3], kept_a) and torch.equal(layer.lora_B[:3], kept_b)
    assert all(torch.all(layer.lora_A[n - 1] == n) for n in range(4, 40))
    assert torch.count_nonzero(layer.lora_B[3:]) == 0
    assert len(stores) < 10  # a store grows by a quarter: 36 growths, a few copies


def test_a_shorter_pool_grown_again_gets_zero_blocks_not_the_old_ones():
    layer, routes = make_layer(n_blocks=2)
    layer.ensure_blocks(20)
    layer.lora_A[10:] = 5.0
    layer.lora_A = layer.lora_A[:10]  # a view of the same store, shorter
    layer.ensure_blocks(12)
    assert torch.count_nonzero(layer.lora_A[10:]) == 0
