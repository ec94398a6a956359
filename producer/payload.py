"""A job's policies as the task payload the workers parse, and the workers' own checks on them before a job exists."""

from __future__ import annotations

from agile.adapters import check_name
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, PromptTemplate
from agile.wire import BatchRequest, PayloadError


def payload(policies: list[dict], observe: bool = False) -> dict:
    """The task keys (besides items, job and batch) that carry a job's policies.

    One policy goes as the plain single-policy payload (`adapter`, `labels`, ...);
    several, or one with a gate, as a policy set (`policies`).
    """
    policies = [{k: v for k, v in p.items() if v is not None} for p in policies]
    flag = {"observe": True} if observe else {}
    if len(policies) == 1 and "if" not in policies[0]:
        return {**policies[0], **flag}
    model = {"model": policies[0]["model"]} if policies[0].get("model") else {}
    return {"policies": [{k: v for k, v in p.items() if k != "model"} for p in policies], **model, **flag}


def check_policy(policies: list[dict], observe: bool = False) -> None:
    """The worker's own checks on a job's policies (payload parser, label rules, adapter names), run before
    a job exists. Whether the workers have an adapter only they can tell: its batches fail closed if not."""
    kwargs = payload(policies, observe)
    try:
        BatchRequest.from_task((), {"texts": ["x"], "job_id": "check", "batch_id": "b0",
                                    **kwargs})
        for policy in kwargs.get("policies") or [kwargs]:
            if policy.get("adapter") is not None:
                check_name(policy["adapter"])
        if not kwargs.get("adapter") and not kwargs.get("policies"):
            PromptTemplate(tuple(kwargs.get("labels") or DEFAULT_LABELS),
                           kwargs.get("instructions") or DEFAULT_INSTRUCTIONS)
    except ValueError as exc:  # PayloadError, AdapterError, or PromptTemplate's label rules
        raise PayloadError(f"the workers would refuse this policy: {exc}") from None
