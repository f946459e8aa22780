"""LVM-Med's pieces: the local cost follows crop geometry, edge affinities by hand, ablation switches,
and training steps that teach the graphs to match."""

from __future__ import annotations

import math

import pytest
import torch

import medssl.losses.graph_matching as gm
import medssl.methods.lvm_med as lvm
from medssl.geometry import FLIP, GEOMETRY_SIZE, HEIGHT, ORIG_H, ORIG_W, WIDTH, cell_centres

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*")


def whole_image(flip: bool) -> torch.Tensor:
    """The geometry of a view that is the whole 64² image, mirrored or not."""
    g = torch.zeros(GEOMETRY_SIZE)
    g[[HEIGHT, WIDTH, ORIG_H, ORIG_W]] = torch.tensor([1.0, 1.0, 64.0, 64.0])
    g[FLIP] = float(flip)
    return g


def positional_cells(geometry: torch.Tensor, grid=(4, 4)) -> torch.Tensor:
    """Cell features that encode where the cell lies in the original image: equal iff same place."""
    centres = cell_centres(geometry, grid)  # [B, P, 2]
    frequencies = torch.tensor([1.0, 2.0, 3.0]) * math.pi
    angles = centres[..., None] * frequencies  # [B, P, 2, 3]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [B, P, 12]


def test_local_cost_matches_cells_by_their_place_in_the_original_image():
    plain, mirrored = whole_image(False)[None], whole_image(True)[None]
    cells_s, cells_t = positional_cells(plain), positional_cells(mirrored)
    centres_s, centres_t = cell_centres(plain, (4, 4)), cell_centres(mirrored, (4, 4))
    right = gm.local_affinity(cells_s[None], cells_t[None], centres_s[None], centres_t[None], top=1.0)
    assert float(right) == pytest.approx(1.0, abs=1e-5)  # every cell finds itself, location and feature
    # tell the cost the mirrored view was not mirrored: locations now pair mirror-image cells
    wrong = gm.local_affinity(cells_s[None], cells_t[None], centres_s[None], centres_s[None], top=1.0)
    assert float(wrong) < 0.9
    # only the location half is wrong: the feature half still finds each cell's twin
    similarity = torch.nn.functional.cosine_similarity(cells_s[0][:, None], cells_t[0][None], dim=-1)
    location_wrong = similarity.diagonal().mean()
    assert float(wrong) == pytest.approx(0.5 * (float(location_wrong) + 1.0), abs=1e-5)


def test_local_cost_keeps_the_best_cells():
    values = torch.tensor([[[[0.1, 0.9, 0.5, 0.3]]]])
    assert float(gm.top_mean(values, 0.5)) == pytest.approx(0.7)
    assert float(gm.top_mean(values, 1.0)) == pytest.approx(0.45)


def test_edge_affinity_by_hand_with_padding():
    zs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    zt = torch.tensor([[[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]])
    edges_s = torch.tensor([[[0, 1], [2, 0], [-1, -1]]])
    edges_t = torch.tensor([[[1, 0], [2, 1]]])
    c = gm.edge_affinity(zs, zt, edges_s, edges_t)
    d_s = [torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])]
    d_t = [torch.tensor([2.0, -2.0]), torch.tensor([-2.0, 0.0])]
    for p, a in enumerate(d_s):
        for q, b in enumerate(d_t):
            assert float(c[0, p, q]) == pytest.approx(
                float(torch.nn.functional.cosine_similarity(a, b, dim=0)), abs=1e-6
            )
    assert torch.equal(c[0, 2], torch.zeros(2))


def batch_of_views(n: int = 32, size: int = 32, seed: int = 0) -> dict:
    from medssl.data.geometric_views import GeometricViewsd, histology_geometric_view
    from medssl.synthetic.textures import ihc_texture_tiles

    tiles, _ = ihc_texture_tiles(n, size=64, seed=seed)
    views = GeometricViewsd.pair(histology_geometric_view(size, scale=(0.3, 1.0)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = [views({"image": tile}) for tile in tiles]
    return {key: [torch.stack([s[key][k] for s in samples]) for k in range(2)] for key in ("views", "geometry")}


def small(**switches) -> lvm.LVMMed:
    torch.manual_seed(0)
    return lvm.LVMMed(backbone={"name": "resnet18", "width": 0.25, "stem_stride": 1}, **switches)


@pytest.mark.parametrize("switches, solver", [({}, "graph_matching"), ({"second_order": False}, "linear_matching")])
def test_second_order_switch_picks_the_solver(switches, solver, monkeypatch):
    used = []
    real = lvm.imle_matching
    monkeypatch.setattr(
        lvm,
        "imle_matching",
        lambda *a, **k: used.append(getattr(k["solver"], "func", k["solver"]).__name__) or real(*a, **k),
    )
    loss = small(**switches).training_step(batch_of_views(), 0)
    assert used == [solver] and loss.requires_grad


def test_ablations_remove_their_part(monkeypatch):
    assert small(message_passing=False).gcn is None
    calls = []
    real = lvm.local_affinity
    monkeypatch.setattr(lvm, "local_affinity", lambda *a: calls.append(1) or real(*a))
    small(local_cost=False).training_step(batch_of_views(), 0)
    assert not calls
    small().training_step(batch_of_views(), 0)
    assert len(calls) == 2  # both directions, c_lo(i, a) + c_lo(a, i)
    with pytest.raises(ValueError, match="cannot form a graph"):
        small().training_step({k: [v[:8] for v in vs] for k, vs in batch_of_views().items()}, 0)


def test_training_steps_teach_the_two_graphs_to_match():
    """With everything on (second order, message passing, local cost, Gumbel noise; the default
    ``edge_gradient`` 0), Adam steps on one batch of real-pixel views raise the share of images matched
    to themselves (Hamming 29 → about 10 after 50 steps; 30 steps are not enough without the edge
    gradient, 29 → 17.6). The literal GCN (no residual) fails this: its 16-node graphs smooth out and
    the loss barely moves (28 → 23.6)."""
    model = small()
    batch = batch_of_views(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(50):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] >= 24  # 2 × 16 nodes: nearly every image matched to another at init
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0], losses


@pytest.mark.parametrize("edge_gradient", [True, False])
def test_edge_gradient_switch_decides_whether_edges_train_the_encoder(edge_gradient, monkeypatch):
    seen = []
    real = lvm.imle_matching
    monkeypatch.setattr(
        lvm,
        "imle_matching",
        lambda unary, edges, *a, **k: seen.append(edges.requires_grad) or real(unary, edges, *a, **k),
    )
    small(edge_gradient=edge_gradient).training_step(batch_of_views(), 0)
    assert seen == [edge_gradient]


def test_scaled_edge_gradient_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    for scale in (1.0, 0.05, 0.0):
        y = lvm.scale_gradient(x, scale)
        assert torch.equal(y, x)
        if y.requires_grad:
            (grad,) = torch.autograd.grad((3 * y).sum(), x)
            torch.testing.assert_close(grad, torch.full_like(x, 3 * scale))
        else:
            assert scale == 0.0
