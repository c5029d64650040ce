"""The router's rules (new / join / split) with the radii they produce, routing, and persistence."""

import numpy as np
import pytest

from melo_cli.router.vocabulary import SHRINK
from melo_cli.router import Router, auto_radius
from melo_cli.router.vocabulary import NO_BLOCK


def v(*xs):
    return np.array(xs, np.float32)


def test_far_key_makes_a_new_cluster_of_the_init_radius():
    router = Router(2, init_radius=1.0)
    assert router.add(v(0, 0), "A", block=0, edit=0).rule == "new"
    result = router.add(v(5, 0), "B", block=0, edit=1)  # d = 5 > r + r0 = 2
    assert result.rule == "new" and len(router) == 2
    assert router.radii.tolist() == [1.0, 1.0]


def test_same_label_joins_and_radius_covers_all_members():
    router = Router(2, init_radius=1.0)
    router.add(v(0, 0), "A", 0, 0)
    result = router.add(v(1.5, 0), "A", 0, 1)  # d = 1.5 <= r + r0 = 2
    assert result.rule == "join" and len(router) == 1
    np.testing.assert_allclose(router.centres[0], [0.75, 0])
    assert router.radii[0] == pytest.approx(1.0)  # max(r0, 0.75)
    assert router.add(v(2.5, 0), "A", 0, 2).rule == "join"  # d to (0.75, 0) = 1.75 <= 1 + 1
    np.testing.assert_allclose(router.centres[0], [4 / 3, 0], rtol=1e-6)
    assert router.radii[0] == pytest.approx(4 / 3)  # the farthest member is 4/3 from the centre
    assert router.add(v(5.0, 0), "A", 0, 3).rule == "new"  # d = 3.67 > r + r0 = 2.33


def test_different_label_splits_so_the_two_clusters_do_not_overlap():
    router = Router(2, init_radius=1.0)
    router.add(v(0, 0), "A", 0, 0)
    result = router.add(v(1.2, 0), "B", 1, 1)  # d = 1.2 <= 2, labels differ
    assert result.rule == "split" and len(router) == 2
    assert router.radii[0] == pytest.approx(SHRINK * 0.6) and router.radii[1] == pytest.approx(SHRINK * 0.6)
    assert router.radii[0] + router.radii[1] < 1.2
    routes = router.route(np.stack([v(0.1, 0), v(1.1, 0), v(0.6, 0)]))
    assert [r.block for r in routes] == [0, 1, NO_BLOCK]


def test_split_keeps_every_member_routable():
    router = Router(1, init_radius=1.0)
    router.add(v(0), "A", 0, 0)
    router.add(v(1.0), "A", 0, 1)  # joins: centre 0.5, radius 1.0
    router.add(v(1.8), "B", 1, 2)  # d = 1.3 -> radius of A shrinks to 0.65: member 1.0 stays (0.5 away)
    router.add(v(-0.9), "C", 2, 3)  # d = 1.4 from 0.5 -> A radius 0.7, member at 0 is 0.5 away: kept
    for key, label in [(0.0, "A"), (1.0, "A"), (1.8, "B"), (-0.9, "C")]:
        route = router.route(v(key)[None])[0]
        assert route.routed and router.labels[route.cluster] == label


def test_members_left_outside_a_split_get_clusters_of_their_own():
    router = Router(1, init_radius=2.0)
    router.add(v(0), "A", 0, 0)
    router.add(v(3.0), "A", 0, 1)  # joins: centre 1.5, radius 2.0 (max(r0, 1.5))
    router.add(v(3.5), "B", 1, 2)  # d = 2 -> A's radius 0.999: both members (1.5 away) fall outside
    assert len(router) == 3  # the A cluster moved onto member 0, member 1 got its own, B is new
    assert sorted(router.centres[:, 0].tolist()) == [0.0, 3.0, 3.5]
    for key, label, block in [(0.0, "A", 0), (3.0, "A", 0), (3.5, "B", 1)]:
        route = router.route(v(key)[None])[0]
        assert route.routed and router.labels[route.cluster] == label and route.block == block
    assert not router.route(v(1.5)[None])[0].routed  # the old, now empty, centre covers nothing
    # no two clusters with different labels overlap
    a, b = router.centres[:, 0], router.radii
    for i in range(3):
        for j in range(3):
            if router.labels[i] != router.labels[j]:
                assert abs(a[i] - a[j]) > b[i] + b[j]


def test_join_across_blocks_moves_the_cluster_to_the_new_block():
    router = Router(1, init_radius=1.0)
    router.add(v(0), "A", 0, 0)
    result = router.add(v(0.5), "A", 3, 7)
    assert result.rule == "join" and result.reassigned and router.blocks[0] == 3
    assert sorted(router.members_of(0).tolist()) == [0, 7]


def test_routing_uses_the_radius_boundary_inclusively():
    router = Router(1, init_radius=1.0)
    router.add(v(0), "A", 0, 0)
    assert router.route(v(1.0)[None])[0].routed
    assert not router.route(v(1.01)[None])[0].routed
    assert Router(1).route(v(0)[None])[0].block == NO_BLOCK  # empty router


def test_cosine_metric_distances():
    router = Router(2, metric="cosine", init_radius=0.1)
    router.add(v(1, 0), "A", 0, 0)
    near = router.route(v(10, 1)[None])[0]  # cos distance ~0.005
    far = router.route(v(0, 1)[None])[0]  # distance 1
    assert near.routed and near.distance == pytest.approx(1 - 10 / np.sqrt(101), abs=1e-5)
    assert not far.routed


def test_hnswlib_index_round_trip_on_disk(tmp_path):
    rng = np.random.default_rng(0)
    router = Router(16, init_radius=0.5)
    keys = rng.normal(size=(300, 16)).astype(np.float32) * 5
    for i, key in enumerate(keys):
        router.add(key, f"label{i}", i // 10, i)  # > 16 clusters: the index is resized while growing
    router.save_index(tmp_path / "router.hnsw")
    again = Router.restore(router.arrays(), router.labels, tmp_path / "router.hnsw", "euclidean", 0.5)
    probes = np.vstack([keys[:50], rng.normal(size=(50, 16)).astype(np.float32) * 5])
    assert [(r.cluster, r.block) for r in router.route(probes)] == [(r.cluster, r.block) for r in again.route(probes)]
    assert all(r.cluster == i and r.routed for i, r in enumerate(again.route(keys)))


def test_auto_radius_is_half_the_median_nearest_neighbour_gap():
    keys = np.array([[0.0], [1.0], [3.0], [6.0]], np.float32)  # gaps 1, 1, 2, 3 -> median 1.5
    assert auto_radius(keys, "euclidean") == pytest.approx(0.75)
    assert auto_radius(keys[:1], "euclidean") > 0


def test_a_negative_inside_an_edit_cluster_shrinks_it_and_routes_to_no_block():
    from melo_cli.router.vocabulary import NEGATIVE

    router = Router(1, init_radius=1.0)
    router.add(v(0), "A", 0, 0)
    router.add(v(0.8), "A", 0, 1)  # joins: centre 0.4, radius 1.0
    assert router.route(v(1.2)[None])[0].routed  # covered before the negative arrives
    result = router.add_negative(v(1.2))
    assert result.rule == "negative" and router.labels[result.cluster] == NEGATIVE
    assert router.radii[0] == pytest.approx(SHRINK * 0.4)  # d = 0.8 from the centre: just under d / 2
    assert not router.route(v(1.2)[None])[0].routed
    for key in (0.0, 0.8):  # both edits still route to block 0 (member 0.8 got its own centre)
        route = router.route(v(key)[None])[0]
        assert route.routed and route.block == 0 and router.labels[route.cluster] == "A"


def test_edits_added_after_negatives_keep_clear_of_them():
    router = Router(1, init_radius=1.0)
    router.add_negative(v(0.5))
    router.add(v(0), "A", 0, 0)  # nearest is the negative at 0.5: split, radius under 0.25
    assert router.radii[1] < 0.25
    router.add(v(-0.3), "A", 0, 1)  # joins A; the grown cluster must not cover the negative
    assert not router.route(v(0.5)[None])[0].routed
    assert router.route(v(0)[None])[0].routed and router.route(v(-0.3)[None])[0].routed


def test_margin_routes_only_when_the_nearest_cluster_is_clearly_nearest():
    plain, strict = Router(1, init_radius=2.0), Router(1, init_radius=2.0, margin=0.5)
    for router in (plain, strict):
        router.add(v(0), "A", 0, 0)
        router.add(v(10), "B", 1, 1)
    assert strict.route(v(1.0)[None])[0].block == 0  # 1.0 from A, 9.0 from B: clearly A
    plain2, strict2 = Router(1, init_radius=3.0), Router(1, init_radius=3.0, margin=0.5)
    for router in (plain2, strict2):
        router.add(v(0), "A", 0, 0)
        router.add(v(4.0), "B", 1, 1)  # split: radii 1.998
    assert plain2.route(v(1.8)[None])[0].block == 0  # 1.8 from A, inside its radius
    assert not strict2.route(v(1.8)[None])[0].routed  # B at 2.2 < 1.5 * 1.8: not clearly A
    assert strict2.route(v(0.5)[None])[0].block == 0  # 0.5 vs 3.5: clearly A


def test_subject_gate_admits_only_edits_whose_subject_the_input_mentions():
    router = Router(2, "euclidean", init_radius=1.0, policy="voronoi")
    router.add(v(0, 0), "English", 0, 0, subject="Danielle Darrieux")
    router.add(v(3, 0), "Islam", 1, 1, subject="Edwin of Northumbria")
    router.add(v(0, 3), "Paris", 2, 2)  # no subject: never gated
    near_a = np.stack([v(0.2, 0)] * 3)
    texts = ["Where Danielle Darrieux is from, people speak", "The mother tongue of Michel Rocard is",
             "danielle DARRIEUX's language"]
    assert [r.block for r in router.route(near_a, texts)] == [0, NO_BLOCK, 0]  # words, case-insensitive
    # the nearest edit fails the gate: the next candidate that passes decides (here: outside its radius)
    assert router.route(v(1.2, 0)[None], ["Edwin of Northumbria is affiliated with"])[0].block == NO_BLOCK
    assert router.route(v(2.6, 0)[None], ["Edwin of Northumbria is affiliated with"])[0].block == 1
    assert router.route(v(0, 2.8)[None], ["anything at all"])[0].block == 2
    assert router.route(near_a[:1])[0].block == 0  # without texts there is no gate


def test_the_entity_gate_follows_members_that_join_and_leave_between_searches(tmp_path):
    """The cluster entities are kept between searches (rebuilt from every member, they cost 19 ms a search at
    10,000 edits): a member that joins, is retired, or comes back in a restored router must count at once."""
    router = Router(2, "euclidean", init_radius=1.0)
    router.add(v(0, 0), "English", 0, 0, subject="Danielle Darrieux")
    text = ["Where Michel Rocard is from, people speak"]
    assert router.route(v(0.1, 0)[None], text)[0].block == NO_BLOCK  # searched once: the table is built
    router.add(v(0.05, 0), "English", 0, 1, subject="Michel Rocard")  # joins the same cluster
    assert router.route(v(0.1, 0)[None], text)[0].block == 0
    router.add_negative(v(8, 8))  # a negative (no entity) changes nothing here
    assert router.route(v(0.1, 0)[None], text)[0].block == 0
    router.save_index(tmp_path / "index.bin")
    restored = Router.restore(router.arrays(), router.labels, tmp_path / "index.bin", "euclidean", 1.0,
                              subjects=router.member_subjects, short=[list(s) for s in router.member_short])
    assert restored.route(v(0.1, 0)[None], text)[0].block == 0
    assert router.retire_edit(1)
    assert router.route(v(0.1, 0)[None], text)[0].block == NO_BLOCK
    assert router.route(v(0.1, 0)[None], ["Danielle Darrieux speaks"])[0].block == 0


def test_a_key_at_a_members_place_with_another_label_supersedes_it():
    router = Router(2, "euclidean", init_radius=1.0)
    router.add(v(0, 0), "English", 0, 0)
    router.add(v(5, 0), "Islam", 0, 1)
    result = router.add(v(0, 1e-5), "French", 1, 2)  # the same input again (float noise apart)
    assert result.superseded == (0,) and result.rule == "new"
    assert router.cluster_of(0) is None and router.n_live == 2
    assert router.route(v(0, 0)[None])[0].block == 1  # the correction, at its full radius
    assert router.radii[result.cluster] == pytest.approx(1.0)
    assert router.retire_edit(1) and router.route(v(5, 0)[None])[0].block == NO_BLOCK
    assert not router.retire_edit(1)  # already retired


def test_member_routes_follow_each_stored_key_and_skip_retired_members():
    router = Router(2, init_radius=1.0)
    router.add(v(0, 0), "A", block=0, edit=0)
    router.add(v(5, 0), "B", block=1, edit=1)
    router.add(v(9, 0), "C", block=2, edit=2)
    router.retire_edit(1)
    routes = router.member_routes(["a", "b", "c"])
    assert sorted(routes) == [0, 2]
    assert (routes[0].block, routes[2].block) == (0, 2) and all(r.routed for r in routes.values())
    router.add_negative(v(9.2, 0))  # shrinks C's radius to just under half the distance: C's own key stays in
    assert router.member_routes(["a", "b", "c"])[2].routed
