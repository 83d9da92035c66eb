"""Where an attempt of a job runs. Pure: a view of the nodes in, a placement or the
reason there is none out.

A node can take ranks when it is up, not drained, and of the pool's accelerator family;
each rank gets one chip that is healthy (ok or warning), not drained and not used by
another live job (nodes without chips, `cpu`, take ranks without chips). Nodes are taken
in name order, so a placement is reproducible; global ranks follow node order, rank 0
on the first node, whose advertised address is the rendezvous (MASTER_ADDR).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.shared.protocol import RankAssignment


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know of one node."""

    node: str
    family: str
    up: bool
    address: str
    #: Chips that are healthy (ok / warning) and not drained; () on a node without chips.
    usable_chips: tuple[int, ...] = ()
    has_chips: bool = True
    drained: str | None = None  # why, when drained
    #: Chips already used by ranks of other live jobs.
    busy_chips: frozenset[int] = field(default_factory=frozenset)
    #: A node without chips that already runs another job's ranks.
    busy: bool = False


@dataclass(frozen=True)
class NodePlacement:
    node: str
    address: str
    ranks: tuple[RankAssignment, ...]


@dataclass(frozen=True)
class Placement:
    pool: str
    nodes: tuple[NodePlacement, ...]
    world_size: int
    ranks_per_node: int

    @property
    def master(self) -> NodePlacement:
        return self.nodes[0]

    def node_names(self) -> list[str]:
        return [n.node for n in self.nodes]


@dataclass(frozen=True)
class NoCapacity:
    """Why the attempt cannot be placed, for the operator: what is needed, what exists."""

    pool: str
    needed: int
    usable: int
    reason: str


def first_usable(family: str, ranks_per_node: int, nodes: list[NodeView], limit: int) -> list[str]:
    """The first `limit` nodes, in placement order, that could take `ranks_per_node`
    ranks: where a placement among them would go (fewer when fewer qualify)."""
    usable = [v.node for v in sorted(nodes, key=lambda v: v.node)
              if v.family == family and _unusable(v, ranks_per_node) is None]
    return usable[:limit]


def place(pool: str, family: str, nodes_needed: int, ranks_per_node: int, nodes: list[NodeView]) -> Placement | NoCapacity:
    chosen: list[NodePlacement] = []
    excluded: list[str] = []
    for view in sorted(nodes, key=lambda v: v.node):
        if view.family != family:
            continue
        why = _unusable(view, ranks_per_node)
        if why is not None:
            excluded.append(f"{view.node} {why}")
            continue
        if len(chosen) == nodes_needed:
            continue
        base = len(chosen) * ranks_per_node
        free = [c for c in view.usable_chips if c not in view.busy_chips]
        ranks = tuple(
            RankAssignment(rank=base + i, local_rank=i, chips=(free[i],) if view.has_chips else ())
            for i in range(ranks_per_node)
        )
        chosen.append(NodePlacement(view.node, view.address, ranks))
    if len(chosen) < nodes_needed:
        what = "node" if nodes_needed == 1 else "nodes"
        per = f" with {ranks_per_node} free healthy chip{'s' if ranks_per_node > 1 else ''} each"
        detail = f"; not usable: {', '.join(excluded)}" if excluded else ""
        return NoCapacity(pool, nodes_needed, len(chosen),
                          f"pool {pool} needs {nodes_needed} {what}{per}, {len(chosen)} qualif"
                          f"{'ies' if len(chosen) == 1 else 'y'}{detail}")
    return Placement(pool, tuple(chosen), nodes_needed * ranks_per_node, ranks_per_node)


def _unusable(view: NodeView, ranks_per_node: int) -> str | None:
    if not view.up:
        return "is not up"
    if view.drained is not None:
        return f"is drained ({view.drained})"
    if not view.has_chips:
        return "already runs another job" if view.busy else None
    free = [c for c in view.usable_chips if c not in view.busy_chips]
    if len(free) < ranks_per_node:
        return f"has {len(free)} free healthy chip{'s' if len(free) != 1 else ''}"
    return None
