"""Request and response bodies: Perspective's documented fields, and the native batch API.

Field names follow Perspective (camelCase) so its clients' JSON fits unchanged.
Unknown fields are refused, as Google's JSON parser refuses them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- Perspective


class TextEntry(_Strict):
    text: str = Field(description="The comment text: not empty, at most AGILE_SERVE_MAX_TEXT_BYTES bytes of UTF-8.")
    type: Literal["PLAIN_TEXT"] = "PLAIN_TEXT"


class Context(_Strict):
    """Accepted for compatibility; the policies score the comment alone."""

    entries: list[TextEntry] = Field(default_factory=list, max_length=16)


class AttributeRequest(_Strict):
    scoreType: Literal["PROBABILITY"] = "PROBABILITY"
    scoreThreshold: float | None = Field(None, ge=0, le=1, description="Scores below it are left out.")


class AnalyzeRequest(_Strict):
    comment: TextEntry
    requestedAttributes: dict[str, AttributeRequest] = Field(
        min_length=1, description="Attributes to score (GET /v1alpha1/attributes lists them), each with an "
                                  "optional scoreThreshold.")
    context: Context | None = None
    spanAnnotations: bool = False
    languages: list[str] = Field(default_factory=list, max_length=16,
                                 description="Echoed back; the policies were trained on `trainedLanguages`.")
    doNotStore: bool = False
    clientToken: str | None = None
    sessionId: str | None = None
    communityId: str | None = None


class Score(BaseModel):
    value: float
    type: Literal["PROBABILITY"] = "PROBABILITY"


class SpanScore(BaseModel):
    begin: int
    end: int
    score: Score


class AttributeScore(BaseModel):
    summaryScore: Score
    spanScores: list[SpanScore] | None = None


class AnalyzeResponse(BaseModel):
    attributeScores: dict[str, AttributeScore]
    languages: list[str]
    trainedLanguages: list[str] = Field(description="The languages the policies were trained on.")
    clientToken: str | None = None


class AttributesResponse(BaseModel):
    attributes: dict[str, str] = Field(description="Perspective attribute -> the policy that scores it.")
    trainedLanguages: list[str]


# ---------------------------------------------------------------- native batch API


class CommentIn(_Strict):
    id: str = Field(min_length=1, max_length=256)
    text: str


class ScoreRequest(_Strict):
    comments: list[CommentIn] = Field(min_length=1, description="At most AGILE_SERVE_MAX_COMMENTS, ids unique.")
    policies: list[str] = Field(min_length=1, max_length=16, description="Policy (adapter) names served here.")
    thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Flag these policies at this probability in this request instead "
                                          "of at their adapters' thresholds; keys among `policies`.")
    doNotStore: bool = False


class PolicyScore(BaseModel):
    probability: float = Field(description="Probability of the policy's positive label.")
    flagged: bool = Field(description="probability >= threshold.")
    label: str = Field(description="The policy's positive label (what `flagged` means).")
    threshold: float
    version: str = Field(description="The adapter's content hash: which exact policy scored.")
    truncated: bool = Field(description="The text was cut to fit the model's window (still scored).")


class CommentResult(BaseModel):
    id: str
    scores: dict[str, PolicyScore] | None = None
    error: str | None = Field(None, description="Why this comment was not scored (the others still are).")


class ScoreResponse(BaseModel):
    model: str
    results: list[CommentResult] = Field(description="One per comment, in the request's order.")


class Health(BaseModel):
    status: Literal["ok"]
    queued: int
    in_flight: int


class ErrorBody(BaseModel):
    code: int
    message: str
    status: str


class Error(BaseModel):
    error: ErrorBody
