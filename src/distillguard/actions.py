"""The enforcement vocabulary: which actions exist, how severe each is, and its parameters.

One registry shared by the policy (``monitor.policy``), the store (``store.actions``), the
admin API and the CLI, so that an action name or a parameter is validated the same way
everywhere: an unknown name or a bad parameter is an ``InputError`` (400), never a row the
gateway cannot act on.

Severity orders the actions so that an account and its cluster get the more severe of two
decisions, and a policy proposal that is not more severe than what stands is not applied.
The graduated actions between ``flag`` and ``throttle`` change what is served rather than
whether: ``cap_logprobs`` (fewer log-probabilities), ``degrade`` (none), ``withhold_reasoning``,
``perturb_reasoning`` (keyed wrong intermediate steps, final answer kept) and ``antidistill``
(sampling that poisons distillation). Their serving side is ``gateway.prevention`` over the
pure defences of ``distillguard.prevent``.
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


MAX_TOP_LOGPROBS = 20  # OpenAI's maximum top_logprobs: a cap above it would cap nothing


class CapLogprobsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The most top_logprobs a request is answered with (0: token log-probabilities only);
    # a request asking for more is served with this many, not refused (clients keep working).
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS)
    # Tokens a day that may carry log-probabilities (None: no budget); beyond it the answer
    # comes without them. Bounds how many soft labels one account can harvest.
    budget: int | None = Field(default=None, ge=0, le=10**12)
    # Returned log-probabilities rounded to this many decimals (None: exact): coarse soft
    # labels carry less of the teacher's distribution.
    round_decimals: int | None = Field(default=None, ge=0, le=6)
    # Standard deviation (nats) of Gaussian noise added to each returned log-probability.
    noise: float = Field(default=0.0, ge=0.0, le=5.0)
    # The most choices (n) a request may ask for (None: the API's own limit); above: 400.
    # Many samples per prompt are what a voting or a distribution-estimating harvester needs.
    n: int | None = Field(default=None, ge=1, le=128)
    # Refuse logprobs together with logit_bias (400): biasing tokens and reading their
    # log-probabilities recovers the full logit vector (the logit-extraction attack).
    refuse_logit_bias: bool = True


class WithholdReasoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # drop: no reasoning in the answer; summary: a short summary the teacher writes itself
    # in its place (upstream: asked of the upstream; dropped when none comes back).
    mode: Literal["drop", "summary"] = "drop"


class PerturbReasoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fraction of the reasoning's intermediate steps whose result is changed (keyed per
    # account, so re-asking returns the same change and voting cannot average it away).
    rate: float = Field(default=1.0, gt=0.0, le=1.0)
    # Largest change of an intermediate result: small offsets look like plausible steps.
    max_offset: int = Field(default=3, ge=1, le=1000)


class AntidistillParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # lambda of Savani et al. (2025): weight of the proxy student's loss change against the
    # teacher's log-probabilities; 0 samples as the teacher does, higher poisons harder.
    lam: float = Field(default=1.0, ge=0.0, le=1000.0, alias="lambda")
    # Finite-difference step along the proxy's loss gradient (smaller: closer to the
    # derivative, noisier in float32).
    epsilon: float = Field(default=0.01, gt=0.0, le=1.0)


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
    ActionKind(
        "perturb_reasoning", 5, PerturbReasoningParams, True, "keyed changes to reasoning steps"
    ),
    ActionKind("antidistill", 6, AntidistillParams, True, "antidistillation sampling"),
    ActionKind("throttle", 7, ThrottleParams, True, "a few requests a minute, 429 beyond"),
    ActionKind("block", 8, NoParams, False, "refused with 403"),
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
    return model.model_dump(by_alias=True)
