"""Request and response bodies: Perspective's documented fields, and the native batch API.

Field names follow Perspective (camelCase) so its clients' JSON fits unchanged.
Unknown fields are refused, as Google's JSON parser refuses them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agile.wire import unicode_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unicode(value: str) -> str:
    problem = unicode_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Every string the server echoes, names in a message or sends to the workers, except comment texts:
# an unpaired surrogate there is refused with the request (400) before anything is queued. A comment
# text stays a plain str, refused per comment with the workers' own rule (serve.service.comment_problem).
Unicode = Annotated[str, AfterValidator(_unicode)]


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
    requestedAttributes: dict[Unicode, AttributeRequest] = Field(
        min_length=1, description="Attributes to score (GET /v1alpha1/attributes lists them), each with an "
                                  "optional scoreThreshold.")
    context: Context | None = None
    spanAnnotations: bool = False
    languages: list[Unicode] = Field(default_factory=list, max_length=16,
                                     description="Echoed back; the policies were trained on `trainedLanguages`.")
    doNotStore: bool = False
    clientToken: Unicode | None = None
    sessionId: Unicode | None = None
    communityId: Unicode | None = None


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
    id: Unicode = Field(min_length=1, max_length=256)
    text: str = Field(description="As comment.text: not empty, at most AGILE_SERVE_MAX_TEXT_BYTES bytes of UTF-8; "
                                  "a text that breaks a rule gets `error`, the others are scored.")


class ScoreRequest(_Strict):
    comments: list[CommentIn] = Field(min_length=1, description="At most AGILE_SERVE_MAX_COMMENTS, ids unique.")
    policies: list[Unicode] = Field(min_length=1, max_length=16, description="Policy (adapter) names served here.")
    thresholds: dict[Unicode, Annotated[float, Field(ge=0, le=1)]] = Field(
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
