"""One hang, one signal, naming the rank that stopped. Pure.

When one rank of a data-parallel job stops, every other rank stops too, waiting for it
in the next collective, and every node's agent sees its own ranks stall. Each agent
reports what it sees as `hang.observed` (per rank: step, phase, where its stack is, a
one-line summary, the stack). `HangJoin` collects those views for one attempt — until
every node of the attempt has reported, or `JOIN_WINDOW` seconds after the first — and
`name_culprit` reads them, in this order of evidence:

1. the one rank whose stack is outside a collective while others wait inside one;
2. the one rank whose step is behind every other's;
3. (no heartbeats) the one rank that used no CPU while the others used some;

and when nothing tells the ranks apart, says so instead of guessing. The result is the
job's one `signal.hang`: its node and rank are the culprit's, its evidence the culprit's
stack and one line per other rank.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from supervisor.shared.protocol import HangRank

#: How long the daemon waits, after a node's first view of a hang, for the other nodes of
#: the attempt. Their ranks stall within a step of the culprit, and each agent may take up
#: to its py-spy timeout (4 s) to dump its ranks' stacks: a window of just that lost the
#: culprit's view on a loaded machine. Only a node that never reports makes the wait this
#: long; when all have reported the join is complete at once.
JOIN_WINDOW = 6.0
#: CPU seconds over the quiet checks: below IDLE a rank did nothing; a peer at BUSY or more
#: was doing something (spinning in a collective, say), so the idle one stands out.
IDLE_CPU_S = 0.01
BUSY_CPU_S = 0.05
#: Bounds of the joined evidence: the culprit's stack, and the line of each other rank.
CULPRIT_STACK_CHARS = 12_000
OTHER_LINE_CHARS = 300
MAX_OTHER_LINES = 64


@dataclass(frozen=True)
class SeenRank:
    node: str
    view: HangRank

    @property
    def label(self) -> str:
        return f"rank {self.view.rank} on {self.node}"


@dataclass(frozen=True)
class Verdict:
    culprit: SeenRank | None
    by: str  # "stack", "step", "cpu", "only_rank" or "none"
    reason: str


def _where(rank: SeenRank) -> str:
    return {"collective": "inside a collective", "elsewhere": "outside any collective"}.get(
        rank.view.where, "of unknown position")


def name_culprit(seen: list[SeenRank], world_size: int | None = None) -> Verdict:
    """The rank the others wait for, from the evidence in order; None when it is not told."""
    if not seen:
        return Verdict(None, "none", "no agent reported the job's ranks, so no rank is named")
    if len(seen) == 1 and world_size == 1:
        return Verdict(seen[0], "only_rank", f"{seen[0].label} is the job's only rank")
    inside = [s for s in seen if s.view.where == "collective"]
    outside = [s for s in seen if s.view.where == "elsewhere"]
    if inside and len(outside) == 1:
        culprit = outside[0]
        return Verdict(culprit, "stack", f"{culprit.label} is the culprit: its stack is outside any collective "
                       f"while {len(inside)} other rank{'s' if len(inside) != 1 else ''} wait{'' if len(inside) != 1 else 's'} in one")
    # Where stacks narrowed it to a few ranks outside while the rest wait, look only among those.
    candidates = outside if inside and outside else seen
    steps = [s.view.step for s in seen]
    if len(seen) > 1 and all(step is not None for step in steps):
        lowest = min(steps)  # type: ignore[type-var]
        behind = [s for s in candidates if s.view.step == lowest]
        if len(behind) == 1 and any(s.view.step != lowest for s in seen):
            culprit = behind[0]
            ahead = sorted({s.view.step for s in seen if s is not culprit})  # type: ignore[type-var]
            return Verdict(culprit, "step", f"{culprit.label} is the culprit: it is at step {lowest}, behind the "
                           f"others (at step {', '.join(map(str, ahead))}), which wait for it")
    cpus = [s.view.cpu_s for s in seen]
    if len(seen) > 1 and all(cpu is not None for cpu in cpus):
        idle = [s for s in candidates if (s.view.cpu_s or 0.0) < IDLE_CPU_S]
        others = [s for s in seen if s not in idle]
        if len(idle) == 1 and others and all((s.view.cpu_s or 0.0) >= BUSY_CPU_S for s in others):
            culprit = idle[0]
            return Verdict(culprit, "cpu", f"{culprit.label} is the culprit: it used no CPU and printed nothing "
                           f"while the other ranks kept using CPU")
    return Verdict(None, "none", _alike(seen, candidates))


def _alike(seen: list[SeenRank], candidates: list[SeenRank]) -> str:
    """Why no rank is named: what the ranks have in common."""
    n = len(seen)
    places = sorted({_where(s) for s in seen})
    where = f"every stack is {places[0]}" if len(places) == 1 else \
        f"{len(candidates)} ranks are outside any collective" if candidates is not seen else "their stacks differ"
    steps = sorted({s.view.step for s in seen if s.view.step is not None})
    step = f"all at step {steps[0]}" if len(steps) == 1 else \
        "no steps reported" if not steps else f"steps {', '.join(map(str, steps[:8]))} tie among them"
    if n == 1:
        return (f"only {seen[0].label} was reported (its stack is {_where(seen[0])}, "
                f"{'step ' + str(seen[0].view.step) if seen[0].view.step is not None else 'no step'}); "
                f"with nothing to compare, no rank is named")
    return f"the {n} ranks look alike ({where}; {step}), so no rank is named"


def _line(s: SeenRank) -> str:
    v = s.view
    step = f"step {v.step} ({v.phase})" if v.step is not None else "no step"
    stalled = f", still for {v.stalled_for_s:.0f}s" if v.stalled_for_s is not None else ""
    cpu = f", cpu {v.cpu_s:.2f}s" if v.cpu_s is not None else ""
    pid = f" (pid {v.pid})" if v.pid else ""
    text = f"{s.label}{pid}: {step}{stalled}{cpu}, {_where(s)}: {v.summary or 'no stack'}"
    return text if len(text) <= OTHER_LINE_CHARS else text[: OTHER_LINE_CHARS - 1] + "…"


def evidence(verdict: Verdict, seen: list[SeenRank], notes: Iterable[str] = ()) -> str:
    """The verdict, the culprit's stack, then one line per other rank, and any notes
    (why a node had no stacks, which nodes did not report)."""
    parts = [verdict.reason]
    others = seen
    if verdict.culprit is not None:
        c = verdict.culprit
        parts.append(f"--- {_line(c)}")
        stack = c.view.stack.strip()
        parts.append(stack[:CULPRIT_STACK_CHARS] if stack else "(no stack dump: see the note below)")
        others = [s for s in seen if s is not c]
    if others:
        parts.append("--- the other ranks:" if verdict.culprit is not None else "--- the ranks:")
        parts += [_line(s) for s in sorted(others, key=lambda s: s.view.rank)[:MAX_OTHER_LINES]]
        if len(others) > MAX_OTHER_LINES:
            parts.append(f"... and {len(others) - MAX_OTHER_LINES} more")
    parts += [f"note: {n}" for n in notes if n]
    return "\n".join(parts)


@dataclass
class HangJoin:
    """The nodes' views of one hang of one attempt, until it is complete or the window ends."""

    attempt: int
    opened_at: float  # monotonic
    expected: frozenset[str]  # the attempt's nodes
    how: str = "heartbeat"
    views: dict[str, list[HangRank]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    window: float = JOIN_WINDOW

    def add(self, node: str, ranks: list[HangRank], note: str | None, how: str) -> None:
        self.views[node] = ranks
        if note:
            self.notes[node] = note
        if how == "quiet" and self.how == "heartbeat" and len(self.views) == 1:
            self.how = "quiet"

    @property
    def deadline(self) -> float:
        return self.opened_at + self.window

    def complete(self, now: float) -> bool:
        return self.expected <= set(self.views) or now >= self.deadline

    def seen(self) -> list[SeenRank]:
        return [SeenRank(node, r) for node in sorted(self.views) for r in self.views[node]]

    def verdict(self, world_size: int | None) -> tuple[Verdict, str, list[str]]:
        """The verdict, its evidence and the notes: every node's own, and the missing."""
        seen = self.seen()
        verdict = name_culprit(seen, world_size)
        notes = [f"{node}: {note}" for node, note in sorted(self.notes.items())]
        missing = sorted(self.expected - set(self.views))
        if missing:
            notes.append(f"no view from {', '.join(missing)} within {self.window:.0f}s (their ranks may still step, "
                         f"or their agents are slow)")
        return verdict, evidence(verdict, seen, notes), notes
