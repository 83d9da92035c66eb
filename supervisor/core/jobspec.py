"""The job file: what to run, where its checkpoints live, under which policy, and the
shape of the job on each pool. YAML, strict like the policies: unknown keys, missing
ones and bad values are reported together as `file:line: what is wrong`.

    name: gpt                       # [a-z0-9][a-z0-9._-]*, unique among live jobs
    command: [python, -m, agents.examples.train_gpt, --steps, "3000"]
    workdir: .                      # the ranks' cwd (resolved at submit)
    checkpoint_dir: /shared/ckpt/gpt   # reachable from every pool
    policy: default                 # a policy loaded by the daemon
    pools:                          # the shape on each pool, may differ
      ascend: {nodes: 2, ranks_per_node: 1}
      nvidia: {nodes: 1, ranks_per_node: 2}
    env:                            # optional, per pool
      ascend: {HCCL_CONNECT_TIMEOUT: "120"}

Pure: bytes in, a `JobSpec` out. Relative paths are resolved by the caller (the CLI,
against the directory it was run from) before the spec reaches the daemon.
"""

from __future__ import annotations

import re

import msgspec
import yaml

from supervisor.shared.protocol import JOB_NAME_PATTERN, MAX_RANKS_PER_NODE
from supervisor.shared.yamlcheck import Checker, YamlProblems, compose, kind, show

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
#: The most nodes one job may ask for on a pool.
MAX_JOB_NODES = 100_000


class PoolShape(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nodes: int
    ranks_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    command: tuple[str, ...]
    workdir: str
    checkpoint_dir: str
    pools: dict[str, PoolShape]
    policy: str = "default"
    env: dict[str, dict[str, str]] = {}
    #: Keep a warm standby per rank (a process with torch imported and the model built,
    #: waiting in `agents.runtime.standby()` for its rank): a restart skips the cold start.
    warm_standby: bool = False


class JobSpecError(YamlProblems):
    """A job file that cannot be used; `problems` lists every reason."""


def load_jobspec(data: bytes, path: str) -> JobSpec:
    try:
        root = compose(data, path, "a job needs name, command, workdir, checkpoint_dir and pools")
    except YamlProblems as exc:
        raise JobSpecError(exc.problems) from None
    checker = _Checker(path)
    spec = checker.spec(root)
    if checker.problems or spec is None:
        raise JobSpecError(checker.sorted_problems())
    return spec


class _Checker(Checker):
    #: Pool names the file declares, even those whose shape is wrong (env may name them).
    declared: tuple[str, ...] = ()

    def spec(self, root: yaml.Node) -> JobSpec | None:
        top = self.mapping(root, "job", ("name", "command", "workdir", "checkpoint_dir", "policy", "pools", "env",
                                   "warm_standby"),
                           required=("name", "command", "workdir", "checkpoint_dir", "pools"))
        if top is None:
            return None
        name = self.str_(top["name"], "name") if "name" in top else None
        if name is not None and not re.match(JOB_NAME_PATTERN, name):
            self.error(top["name"], f"name {name!r}: use lower-case letters, digits, '.', '_' and '-', starting "
                                    "with a letter or digit, at most 63")
        command = self.command(top["command"]) if "command" in top else None
        workdir = self.path_value(top["workdir"], "workdir") if "workdir" in top else None
        ckpt = self.path_value(top["checkpoint_dir"], "checkpoint_dir") if "checkpoint_dir" in top else None
        policy = self.str_(top["policy"], "policy") if "policy" in top else "default"
        pools = self.pools(top["pools"]) if "pools" in top else None
        env = self.env(top["env"], self.declared) if "env" in top else {}
        standby = self.bool_(top["warm_standby"], "warm_standby") if "warm_standby" in top else False
        if self.problems or None in (name, command, workdir, ckpt, policy, pools, env, standby):
            return None
        return JobSpec(name=name, command=command, workdir=workdir, checkpoint_dir=ckpt, policy=policy,  # type: ignore[arg-type]
                       pools=pools, env=env, warm_standby=bool(standby))  # type: ignore[arg-type]

    def command(self, node: yaml.Node) -> tuple[str, ...] | None:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, f"command must be a non-empty list of words, got {kind(node)}")
            return None
        words = []
        for item in node.value:
            value = self.scalar(item)
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
                self.error(item, f"command: each word must be a string or number, got {show(value)}")
                return None
            text = value if isinstance(value, str) else str(value)
            if "\0" in text:
                self.error(item, "command: a word may not hold a NUL byte")
                return None
            words.append(text)
        return tuple(words)

    def path_value(self, node: yaml.Node, where: str) -> str | None:
        # Not `path`: Checker.path is the file name, and an instance attribute hides a method.
        value = self.str_(node, where)
        if value is not None and ("\0" in value or len(value) > 4096):
            self.error(node, f"{where} must be a path (no NUL, at most 4096 characters)")
            return None
        return value

    def pools(self, node: yaml.Node) -> dict[str, PoolShape] | None:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.error(node, f"pools must map pool names to {{nodes: N, ranks_per_node: M}}, got {kind(node)}")
            return None
        out: dict[str, PoolShape] = {}
        for key_node, value_node in node.value:
            pool = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            if not _POOL_NAME.match(str(pool)):
                self.error(key_node, f"pool name {pool!r}: use letters, digits, '.', '_' and '-'")
                continue
            if pool in out or pool in self.declared:
                self.error(key_node, f"pools: duplicate pool {pool!r}")
                continue
            self.declared += (str(pool),)
            values = self.mapping(value_node, f"pool {pool!r}", ("nodes", "ranks_per_node"),
                                  required=("nodes", "ranks_per_node"))
            if values is None or len(values) < 2:
                continue
            nodes = self.int_(values["nodes"], f"pool {pool!r} nodes", 1)
            ranks = self.int_(values["ranks_per_node"], f"pool {pool!r} ranks_per_node", 1)
            if nodes is not None and nodes > MAX_JOB_NODES:
                self.error(values["nodes"], f"pool {pool!r} nodes: at most {MAX_JOB_NODES}")
                continue
            if ranks is not None and ranks > MAX_RANKS_PER_NODE:
                self.error(values["ranks_per_node"], f"pool {pool!r} ranks_per_node: at most {MAX_RANKS_PER_NODE}")
                continue
            if nodes is not None and ranks is not None:
                out[pool] = PoolShape(nodes=nodes, ranks_per_node=ranks)
        return out

    def env(self, node: yaml.Node, pools: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
        values = self.mapping(node, "env", tuple(pools) or ("<a pool named in pools>",))
        if values is None:
            return None
        out: dict[str, dict[str, str]] = {}
        for pool, table in values.items():
            if not isinstance(table, yaml.MappingNode):
                self.error(table, f"env {pool}: must map variable names to values, got {kind(table)}")
                continue
            variables: dict[str, str] = {}
            for key_node, value_node in table.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
                value = self.scalar(value_node)
                if not _ENV_NAME.match(str(key)):
                    self.error(key_node, f"env {pool}: {key!r} is not a variable name")
                elif isinstance(value, bool) or not isinstance(value, (str, int, float)) or "\0" in str(value):
                    self.error(value_node, f"env {pool}.{key}: must be a string (quote numbers), got {show(value)}")
                else:
                    variables[str(key)] = str(value)
            out[pool] = variables
        return out
