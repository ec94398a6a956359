"""Perspective's `POST /v1alpha1/comments:analyze`, answered by the policies of the attribute map.

An attribute's summaryScore is the probability of its policy's positive label, as
the worker computes it (so calibrated once the adapter carries a calibration). With `spanAnnotations` the
one span is the whole comment: the policies score comments, not sentences.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from agile.serve.errors import RESPONSES, ApiError
from agile.serve.keys import require_key
from agile.serve.models import (
    AnalyzeRequest,
    AnalyzeResponse,
    AttributeScore,
    AttributesResponse,
    Score,
    SpanScore,
)
from agile.serve.service import Service, comment_problem

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1alpha1/comments:analyze", response_model=AnalyzeResponse, response_model_exclude_none=True,
             responses=RESPONSES, summary="Score one comment for the requested attributes (Perspective API)")
async def analyze(body: AnalyzeRequest, request: Request) -> AnalyzeResponse:
    service: Service = request.app.state.service
    mapping = service.attributes.attributes
    problem = comment_problem(body.comment.text, service.settings.max_text_bytes)
    if problem:
        raise ApiError(400, f"comment.text: {problem}")
    unknown = sorted(a for a in body.requestedAttributes if a not in mapping)
    if unknown:
        raise ApiError(400, f"Unknown attribute(s) {', '.join(unknown)}; this server scores "
                            f"{', '.join(sorted(mapping))}")
    policies = sorted({mapping[a] for a in body.requestedAttributes})
    scored = await service.score(policies, [body.comment.text], body.doNotStore)
    scores = {}
    for attr, wanted in body.requestedAttributes.items():
        result = scored[mapping[attr]][0]
        if result.error:
            raise ApiError(400, f"comment.text: {result.error}")
        if wanted.scoreThreshold is not None and result.probability < wanted.scoreThreshold:
            continue
        score = Score(value=result.probability)
        spans = [SpanScore(begin=0, end=len(body.comment.text), score=score)] if body.spanAnnotations else None
        scores[attr] = AttributeScore(summaryScore=score, spanScores=spans)
    trained = service.attributes.languages
    return AnalyzeResponse(attributeScores=scores, languages=body.languages or trained, trainedLanguages=trained,
                           clientToken=body.clientToken)


@router.get("/v1alpha1/attributes", response_model=AttributesResponse, responses=RESPONSES,
            summary="The attributes this server scores, and the policy behind each")
async def attributes(request: Request) -> AttributesResponse:
    mapping = request.app.state.service.attributes
    return AttributesResponse(attributes=mapping.attributes, trainedLanguages=mapping.languages)
