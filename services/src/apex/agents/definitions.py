"""Versioned agent and tool definitions, and their compatibility.

An agent is ``{name, version, model, system, tools: {name: "<semver range>"}, max_tokens,
temperature?, output_schema?}``; a tool ``{name, version, description, parameters,
permission?}`` (:class:`apex.agents.tools.Tool`). The built-in ones (agents ``assistant``
and ``extractor`` 1.0.0, tools ``calculator``, ``lookup`` and ``echo`` 1.0.0) are in the
code; registered versions are in PostgreSQL (``agent_definitions``,
``agent_tool_versions``: migration 0017), so every process sees them.

The rules (notes-agents.md § Tools and definitions):

- A tool's **current version** is the highest one registered; a run's agent call gets
  the current version of each of its agent's tools. Older versions stay listed.
- An agent version is registered only if the current version of each tool it names is in
  the tool's range (else ``incompatible``, naming the tool).
- A new tool version must be newer than the current one, and it is registered only if
  it is in the range of the **latest** version of every agent naming the tool (else
  ``incompatible``, naming the agents): to move a tool to a new major version, first
  register an agent version whose range allows it.
- A run of an agent without ``agent_version`` runs the agent's latest version.

The built-in ``extractor`` answers JSON only, checked against its ``output_schema`` by the
quality gate. Every agent asks at ``temperature`` 0 unless its definition says otherwise
(so its answers may be cached: only temperature 0 requests are).

Registrations take one transaction-scoped advisory lock, so two of them never check
against a state the other is changing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import asyncpg

from apex.agents.semver import Range, SemverError, Version
from apex.agents.tools import BUILTIN_TOOLS, Tool

__all__ = ["BUILTIN_AGENTS", "Agent", "DefinitionError", "DefinitionStore"]

# The one lock every registration takes (an arbitrary constant: "agdefs" in ASCII).
_LOCK: Final = 0x616764656673


class DefinitionError(Exception):
    """A definition refused: ``status`` and ``code`` are the HTTP answer's."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Agent:
    """An agent: its model, its system message, its answer's token bound, its tools (name
    -> semver range), its sampling temperature and the JSON Schema its answer must fit
    (None: free text)."""

    name: str
    version: str
    model: str
    system: str
    max_tokens: int
    tools: Mapping[str, str] = dataclasses.field(default_factory=dict)
    temperature: float = 0.0
    output_schema: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Agent:
        return cls(
            name=data["name"],
            version=data["version"],
            model=data["model"],
            system=data["system"],
            max_tokens=data["max_tokens"],
            tools=dict(data.get("tools") or {}),
            temperature=data.get("temperature", 0.0),
            output_schema=data.get("output_schema"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model": self.model,
            "system": self.system,
            "tools": dict(self.tools),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "output_schema": None if self.output_schema is None else dict(self.output_schema),
        }

    def ranges(self) -> dict[str, Range]:
        """Its tools' ranges, parsed (DefinitionError 422 ``invalid_range``)."""
        try:
            return {name: Range.parse(text) for name, text in self.tools.items()}
        except SemverError as exc:
            raise DefinitionError(422, "invalid_range", f"agent {self.name}: {exc}") from None


BUILTIN_AGENTS: Final[Mapping[str, Agent]] = MappingProxyType(
    {
        "assistant": Agent(
            name="assistant",
            version="1.0.0",
            model="gpt-4o-mini",
            system="You are a helpful assistant.",
            max_tokens=256,
        ),
        "extractor": Agent(
            name="extractor",
            version="1.0.0",
            model="gpt-4o-mini",
            system=(
                "Extract the city and the country the text names. Answer with a JSON "
                'object {"city": ..., "country": ...} and nothing else.'
            ),
            max_tokens=256,
            output_schema=MappingProxyType(
                {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                    "required": ["city", "country"],
                    "additionalProperties": False,
                }
            ),
        ),
    }
)


def _latest(versions: list[Any]) -> Any:
    """The definition (agent or tool) with the highest version."""
    return max(versions, key=lambda item: Version.parse(item.version))


class DefinitionStore:
    """The agent and tool definitions: the built-in ones and those in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- reading -----------------------------------------------------------------------

    async def tool_versions(self, conn: asyncpg.Connection | None = None) -> dict[str, list[Tool]]:
        """Every tool's versions, oldest first."""
        rows = await self._fetch("SELECT definition FROM agent_tool_versions", conn)
        found: dict[str, list[Tool]] = {name: [tool] for name, tool in BUILTIN_TOOLS.items()}
        for row in rows:
            tool = Tool.of(json.loads(row["definition"]))
            found.setdefault(tool.name, []).append(tool)
        return {
            name: sorted(tools, key=lambda tool: Version.parse(tool.version))
            for name, tools in found.items()
        }

    async def agent_versions(
        self, conn: asyncpg.Connection | None = None
    ) -> dict[str, list[Agent]]:
        """Every agent's versions, oldest first."""
        rows = await self._fetch("SELECT definition FROM agent_definitions", conn)
        found: dict[str, list[Agent]] = {name: [agent] for name, agent in BUILTIN_AGENTS.items()}
        for row in rows:
            agent = Agent.of(json.loads(row["definition"]))
            found.setdefault(agent.name, []).append(agent)
        return {
            name: sorted(agents, key=lambda agent: Version.parse(agent.version))
            for name, agents in found.items()
        }

    async def agent(self, name: str, version: str | None = None) -> Agent | None:
        """The agent's ``version`` (None: its latest), if registered."""
        versions = (await self.agent_versions()).get(name)
        if not versions:
            return None
        if version is None:
            return versions[-1]
        return next((agent for agent in versions if agent.version == version), None)

    async def tools_of(self, agent: Agent) -> dict[str, Tool]:
        """The current version of each of the agent's tools; DefinitionError 422
        ``incompatible`` when one is missing or outside the agent's range."""
        current = {name: tools[-1] for name, tools in (await self.tool_versions()).items()}
        return _resolve(agent, current)

    # -- registering -------------------------------------------------------------------

    async def register_agent(self, agent: Agent) -> Agent:
        """Register an agent version whose tools' current versions are in its ranges."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            versions = (await self.agent_versions(conn)).get(agent.name, [])
            if any(known.version == agent.version for known in versions):
                raise DefinitionError(
                    409, "version_exists", f"agent {agent.name} {agent.version} is registered"
                )
            tools = await self.tool_versions(conn)
            _resolve(agent, {name: versions[-1] for name, versions in tools.items()})
            await conn.execute(
                "INSERT INTO agent_definitions (name, version, definition) "
                "VALUES ($1, $2, $3::jsonb)",
                agent.name,
                agent.version,
                json.dumps(agent.to_json()),
            )
        return agent

    async def register_tool(self, tool: Tool) -> Tool:
        """Register a tool version newer than the current one and in the range of the
        latest version of every agent naming the tool."""
        new = Version.parse(tool.version)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            versions = (await self.tool_versions(conn)).get(tool.name, [])
            if versions and new <= Version.parse(versions[-1].version):
                raise DefinitionError(
                    409,
                    "not_newer",
                    f"tool {tool.name} {tool.version}: the current version is "
                    f"{versions[-1].version}; a new version must be higher",
                )
            broken = [
                f"{agent.name} {agent.version} ({agent.tools[tool.name]})"
                for agent in (_latest(v) for v in (await self.agent_versions(conn)).values())
                if tool.name in agent.tools and not agent.ranges()[tool.name].allows(new)
            ]
            if broken:
                raise DefinitionError(
                    409,
                    "incompatible",
                    f"tool {tool.name} {tool.version} is outside the range of agent(s) "
                    f"{', '.join(sorted(broken))}: register an agent version that allows it "
                    "first",
                )
            await conn.execute(
                "INSERT INTO agent_tool_versions (name, version, definition) "
                "VALUES ($1, $2, $3::jsonb)",
                tool.name,
                tool.version,
                json.dumps(tool.to_json()),
            )
        return tool

    async def _fetch(self, query: str, conn: asyncpg.Connection | None) -> list[asyncpg.Record]:
        if conn is not None:
            return list(await conn.fetch(query))
        async with self._pool.acquire() as own:
            return list(await own.fetch(query))


def _resolve(agent: Agent, current: Mapping[str, Tool]) -> dict[str, Tool]:
    """The agent's tools among ``current`` (name -> current version), each in range."""
    resolved: dict[str, Tool] = {}
    for name, wanted in agent.ranges().items():
        tool = current.get(name)
        if tool is None:
            raise DefinitionError(
                422, "incompatible", f"agent {agent.name} {agent.version}: no tool {name!r}"
            )
        if not wanted.allows(Version.parse(tool.version)):
            raise DefinitionError(
                422,
                "incompatible",
                f"agent {agent.name} {agent.version}: tool {name} {wanted} is not satisfied "
                f"by its current version {tool.version}",
            )
        resolved[name] = tool
    return resolved
