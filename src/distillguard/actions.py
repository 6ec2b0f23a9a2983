"""The enforcement vocabulary: which actions exist, how severe each is, and its parameters.

One registry shared by the policy (``monitor.policy``), the store (``store.actions``), the
admin API and the CLI, so that an action name or a parameter is validated the same way
everywhere: an unknown name or a bad parameter is an ``InputError`` (400), never a row the
gateway cannot act on.

Severity orders the actions so that an account and its cluster get the more severe of two
decisions, and a policy proposal that is not more severe than what stands is not applied.
The graduated actions between ``flag`` and ``throttle`` change what is served rather than
whether: ``cap_logprobs`` (fewer log-probabilities), ``degrade`` (none), ``withhold_reasoning``
and ``antidistill`` (sampling that poisons distillation). Their serving side belongs to the
prevention room; the names, parameters and enforcement state are here already so that adding
one is a registry entry, not a schema change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillguard.errors import InputError


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThrottleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Requests a minute the account keeps; None: the policy's throttle_rpm.
    rpm: int | None = Field(default=None, ge=0, le=1_000_000)
    # What a refused client is told to wait (seconds); None: until the minute's budget is back.
    retry_after_s: float | None = Field(default=None, gt=0, le=86_400)


class CapLogprobsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The most top_logprobs a request is answered with (0: token log-probabilities only).
    top_logprobs: int = Field(default=0, ge=0, le=20)


class WithholdReasoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # drop: no reasoning in the answer; summary: a short summary in its place.
    mode: Literal["drop", "summary"] = "drop"


class AntidistillParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # How hard sampling is steered away from what a student learns from (0, 1].
    strength: float = Field(default=0.5, gt=0, le=1)


@dataclass(frozen=True)
class ActionKind:
    """One enforcement action: its name, severity rank and parameter schema."""

    name: str
    severity: int  # higher wins when two decisions meet
    params: type[BaseModel]
    serves: bool  # the request is still answered (possibly changed)
    description: str


_KINDS = (
    ActionKind("allow", 0, NoParams, True, "no action"),
    ActionKind("flag", 1, NoParams, True, "served; listed for review"),
    ActionKind("cap_logprobs", 2, CapLogprobsParams, True, "served with fewer logprobs"),
    ActionKind("degrade", 3, NoParams, True, "served through the prevention hook"),
    ActionKind("withhold_reasoning", 4, WithholdReasoningParams, True, "reasoning withheld"),
    ActionKind("antidistill", 5, AntidistillParams, True, "antidistillation sampling"),
    ActionKind("throttle", 6, ThrottleParams, True, "a few requests a minute, 429 beyond"),
    ActionKind("block", 7, NoParams, False, "refused with 403"),
)
REGISTRY: dict[str, ActionKind] = {k.name: k for k in _KINDS}
ACTION_NAMES = tuple(REGISTRY)  # "allow" included: what a policy rule may say
APPLICABLE = tuple(n for n in ACTION_NAMES if n != "allow")  # what may be applied to an account
SEVERITY = {k.name: k.severity for k in _KINDS}


def action_kind(name: str) -> ActionKind:
    """The registry entry for ``name``; InputError naming the known actions otherwise."""
    kind = REGISTRY.get(name) if isinstance(name, str) else None
    if kind is None or kind.name == "allow":
        raise InputError(
            f"unknown action {name!r}; use one of {', '.join(APPLICABLE)}",
            param="action",
            code="unknown_action",
        )
    return kind


def validate_params(name: str, params: Any) -> dict[str, Any]:
    """``params`` checked against the action's schema, with defaults filled in."""
    kind = action_kind(name)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InputError(f"params of {name!r} must be an object", param="params")
    try:
        model = kind.params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "params"
        raise InputError(
            f"params of {name!r}: {where}: {first.get('msg', 'invalid value')}",
            param=f"params.{where}",
            code="invalid_params",
        ) from exc
    return model.model_dump()
