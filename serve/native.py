"""`POST /v1/score`: many comments with ids under several policies, one result per comment, in order.

A comment that cannot be scored (empty, too long, not valid Unicode) gets an
`error` and the rest are scored, as in the queue's results; a request that cannot
be read at all (duplicate ids, an unknown policy) is refused whole with 400.
`thresholds` flags a policy at the request's own probability instead of its
adapter's: the score is the same, only `flagged` and `threshold` follow it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from agile.serve.errors import RESPONSES, ApiError
from agile.serve.keys import require_key
from agile.serve.models import CommentResult, PolicyScore, ScoreRequest, ScoreResponse
from agile.serve.service import Scored, Service, comment_problem

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=RESPONSES,
             summary="Score a batch of comments under several policies")
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    service: Service = request.app.state.service
    if len(body.comments) > service.settings.max_comments:
        raise ApiError(400, f"comments has {len(body.comments)} entries; the limit is "
                            f"{service.settings.max_comments} per request")
    seen: set[str] = set()
    for n, comment in enumerate(body.comments):
        if comment.id in seen:
            raise ApiError(400, f"comments[{n}].id {comment.id!r} appears twice; ids must be unique")
        seen.add(comment.id)
    unknown = [p for p in body.policies if p not in service.attributes.policies]
    if unknown or len(set(body.policies)) != len(body.policies):
        raise ApiError(400, f"policies must be distinct names among {', '.join(service.attributes.policies)}; "
                            f"got {', '.join(body.policies)}")
    stray = sorted(set(body.thresholds) - set(body.policies))
    if stray:
        raise ApiError(400, f"thresholds names {', '.join(stray)}, not among this request's policies "
                            f"({', '.join(body.policies)})")
    problems = {c.id: comment_problem(c.text, service.settings.max_text_bytes) for c in body.comments}
    todo = [c for c in body.comments if problems[c.id] is None]
    scored = await service.score(body.policies, [c.text for c in todo], body.doNotStore) if todo else {}
    by_id = {c.id: n for n, c in enumerate(todo)}
    results, model = [], ""
    for c in body.comments:
        if problems[c.id]:
            results.append(CommentResult(id=c.id, error=problems[c.id]))
            continue
        got = {p: scored[p][by_id[c.id]] for p in body.policies}
        errors = [f"{p}: {s.error}" for p, s in got.items() if s.error]
        if errors:
            results.append(CommentResult(id=c.id, error="; ".join(errors)))
            continue
        model = model or next(iter(got.values())).model
        results.append(CommentResult(id=c.id, scores={p: _policy_score(s, body.thresholds.get(p))
                                                      for p, s in got.items()}))
    return ScoreResponse(model=model, results=results)


def _policy_score(s: Scored, threshold: float | None) -> PolicyScore:
    """The worker's decision, or the request's own threshold on the same (calibrated) probability."""
    flagged = s.flagged if threshold is None else s.probability >= threshold
    return PolicyScore(probability=s.probability, flagged=flagged, label=s.label,
                       threshold=s.threshold if threshold is None else threshold, version=s.version,
                       truncated=s.truncated)
