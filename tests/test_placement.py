"""Where an attempt runs (`supervisor/core/placement.py`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.placement import NoCapacity, NodeView, Placement, first_usable, place


def view(node: str, chips: tuple[int, ...] = (0, 1), family: str = "ascend", **kw) -> NodeView:
    return NodeView(node=node, family=family, up=kw.pop("up", True), address=f"addr-{node}", usable_chips=chips, **kw)


def test_nodes_in_name_order_rank_zero_on_the_first() -> None:
    placed = place("ascend", "ascend", 2, 2, [view("b"), view("a"), view("c")])
    assert isinstance(placed, Placement)
    assert placed.node_names() == ["a", "b"] and placed.world_size == 4
    assert placed.master.address == "addr-a"
    assert [(r.rank, r.local_rank, r.chips) for n in placed.nodes for r in n.ranks] == [
        (0, 0, (0,)), (1, 1, (1,)), (2, 0, (0,)), (3, 1, (1,))]


def test_skips_other_families_down_drained_and_busy() -> None:
    nodes = [
        view("a", up=False),
        view("b", drained="maintenance"),
        view("c", busy_chips=frozenset({0})),
        view("d", chips=(1, 2, 3), busy_chips=frozenset({2})),
        view("n", family="nvidia"),
    ]
    placed = place("ascend", "ascend", 1, 2, nodes)
    assert isinstance(placed, Placement)
    assert placed.node_names() == ["d"] and [r.chips for r in placed.nodes[0].ranks] == [(1,), (3,)]


def test_first_usable_are_where_a_placement_would_go_even_too_few() -> None:
    nodes = [view("e"), view("a", up=False), view("b", chips=(0,)), view("d"), view("c"), view("n", family="nvidia")]
    assert first_usable("ascend", 2, nodes, 2) == ["c", "d"]
    assert first_usable("ascend", 2, nodes, 5) == ["c", "d", "e"]
    assert first_usable("ascend", 2, [view("a", drained="bad")], 1) == []


def test_no_capacity_says_what_is_missing() -> None:
    nodes = [view("a", up=False), view("b", drained="bad chips"), view("c", chips=(0,))]
    placed = place("ascend", "ascend", 2, 2, nodes)
    assert isinstance(placed, NoCapacity)
    assert (placed.pool, placed.needed, placed.usable) == ("ascend", 2, 0)
    assert placed.reason == ("pool ascend needs 2 nodes with 2 free healthy chips each, 0 qualify; not usable: "
                             "a is not up, b is drained (bad chips), c has 1 free healthy chip")


def test_nodes_without_chips_take_ranks_unless_another_job_runs_there() -> None:
    nodes = [view("c1", chips=(), family="cpu", has_chips=False, busy=True),
             view("c2", chips=(), family="cpu", has_chips=False)]
    placed = place("cpu", "cpu", 1, 4, nodes)
    assert isinstance(placed, Placement) and placed.node_names() == ["c2"]
    assert all(r.chips == () for r in placed.nodes[0].ranks)
    assert isinstance(place("cpu", "cpu", 2, 1, nodes), NoCapacity)


_node = st.builds(
    lambda i, up, drained, chips, busy, family: NodeView(
        node=f"n{i:02d}", family=family, up=up, address=f"addr{i}", usable_chips=tuple(sorted(chips)),
        drained="x" if drained else None, busy_chips=frozenset(busy)),
    st.integers(0, 30), st.booleans(), st.booleans(), st.sets(st.integers(0, 7), max_size=8),
    st.sets(st.integers(0, 7), max_size=4), st.sampled_from(["ascend", "ascend", "nvidia"]),
)


@given(st.lists(_node, max_size=12, unique_by=lambda v: v.node), st.integers(1, 4), st.integers(1, 4))
def test_placement_never_shares_a_chip_nor_uses_an_unusable_one(nodes: list[NodeView], needed: int, per: int) -> None:
    placed = place("ascend", "ascend", needed, per, nodes)
    by_name = {v.node: v for v in nodes}
    if isinstance(placed, NoCapacity):
        usable = [v for v in nodes if v.family == "ascend" and v.up and v.drained is None
                  and len(set(v.usable_chips) - v.busy_chips) >= per]
        assert len(usable) < needed and placed.usable == len(usable)
        return
    assert len(placed.nodes) == needed and placed.world_size == needed * per
    assert sorted(r.rank for n in placed.nodes for r in n.ranks) == list(range(needed * per))
    used: set[tuple[str, int]] = set()
    for share in placed.nodes:
        v = by_name[share.node]
        assert v.family == "ascend" and v.up and v.drained is None
        assert len(share.ranks) == per
        for r in share.ranks:
            assert len(r.chips) == 1
            chip = r.chips[0]
            assert chip in v.usable_chips and chip not in v.busy_chips
            assert (share.node, chip) not in used
            used.add((share.node, chip))
