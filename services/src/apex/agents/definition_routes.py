"""apex.agents' routes of agent and tool definitions (the admin token; JSON errors
``{"error", "detail"}``).

- ``POST /v1/agents {name, version, model, system, tools?: {name: range}, max_tokens,
  temperature? (0 to 2, default 0), output_schema?}``: 201 with the definition; 422
  ``incompatible`` when a tool it names has no current version in its range, 409
  ``version_exists``; nothing stored on a refusal.
- ``POST /v1/tools {name, version, description, parameters, permission?}``: 201; 409
  ``incompatible`` (naming the agents) when the version is outside the range of an
  agent's latest version, 409 ``not_newer``; 422 ``unknown_tool`` (no implementation),
  ``invalid_schema``, ``invalid_version``.
- ``GET /v1/agents/{name}``, ``GET /v1/tools/{name}``: ``{name, latest|current,
  versions: [...]}`` (oldest first); 404 ``not_found``.

The rules are :mod:`apex.agents.definitions`'.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from apex.agents.definitions import Agent, DefinitionError
from apex.agents.routes import Service, require_admin
from apex.agents.semver import SemverError, Version
from apex.agents.tools import Tool, ToolDefinitionError
from apex.common.http import ApiError, require_json_body

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_admin)])

MAX_TOOLS: Final = 32
DefName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
VersionText = Annotated[str, Field(min_length=1, max_length=50)]
# "<resource>:<action>" as apex.auth names permissions.
Permission = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}:[a-z0-9][a-z0-9_.-]{0,63}$")
]


class AgentIn(BaseModel):
    """An agent version as an admin registers it."""

    model_config = ConfigDict(extra="forbid")

    name: DefName
    version: VersionText
    model: Annotated[str, Field(min_length=1, max_length=100)]
    system: Annotated[str, Field(min_length=1, max_length=100_000)]
    tools: Annotated[
        dict[DefName, Annotated[str, Field(max_length=100)]], Field(max_length=MAX_TOOLS)
    ] = {}
    max_tokens: Annotated[int, Field(ge=1, le=100_000)]
    # The quality gate and the response cache read it (only temperature 0 is cached).
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    output_schema: dict[str, Any] | None = None


class ToolIn(BaseModel):
    """A tool version as an admin registers it."""

    model_config = ConfigDict(extra="forbid")

    name: DefName
    version: VersionText
    description: Annotated[str, Field(min_length=1, max_length=1000)]
    parameters: dict[str, Any]
    permission: Permission | None = None


@router.post("/v1/agents", dependencies=[Depends(require_json_body)])
async def register_agent(body: AgentIn, service: Service) -> JSONResponse:
    """Register an agent version (checked against the tools' current versions)."""
    try:
        Version.parse(body.version)
    except SemverError as exc:
        raise ApiError(422, "invalid_version", str(exc)) from None
    if body.model not in service.settings.models:
        known = ", ".join(sorted(service.settings.models))
        raise ApiError(422, "unknown_model", f"no price of model {body.model!r}; known: {known}")
    if body.output_schema is not None:
        try:
            Draft202012Validator.check_schema(body.output_schema)
        except SchemaError as exc:
            raise ApiError(422, "invalid_schema", f"output_schema: {exc.message}") from None
    agent = Agent.of(body.model_dump())
    try:
        await service.definitions.register_agent(agent)
    except DefinitionError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from None
    return JSONResponse(agent.to_json(), status_code=201)


@router.post("/v1/tools", dependencies=[Depends(require_json_body)])
async def register_tool(body: ToolIn, service: Service) -> JSONResponse:
    """Register a tool version (checked against the agents' latest ranges)."""
    try:
        tool = Tool.of(body.model_dump())
        await service.definitions.register_tool(tool)
    except ToolDefinitionError as exc:
        raise ApiError(422, exc.code, exc.detail) from None
    except DefinitionError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from None
    return JSONResponse(tool.to_json(), status_code=201)


@router.get("/v1/agents/{name}")
async def get_agent(name: str, service: Service) -> dict[str, Any]:
    """The agent's versions, oldest first, and its latest."""
    versions = (await service.definitions.agent_versions()).get(name)
    if not versions:
        raise ApiError(404, "not_found", f"no agent {name!r}")
    return {
        "name": name,
        "latest": versions[-1].version,
        "versions": [agent.to_json() for agent in versions],
    }


@router.get("/v1/tools/{name}")
async def get_tool(name: str, service: Service) -> dict[str, Any]:
    """The tool's versions, oldest first, and its current one."""
    versions = (await service.definitions.tool_versions()).get(name)
    if not versions:
        raise ApiError(404, "not_found", f"no tool {name!r}")
    return {
        "name": name,
        "current": versions[-1].version,
        "versions": [tool.to_json() for tool in versions],
    }
