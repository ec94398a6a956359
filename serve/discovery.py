"""Google's API discovery document for `commentanalyzer v1alpha1`, served at `GET /$discovery/rest`.

Perspective's own samples build their client from discovery
(`googleapiclient.discovery.build("commentanalyzer", "v1alpha1", discoveryServiceUrl=...)`,
`google.discoverAPI(url)` in Node). With this document at our address, such a client
works with nothing changed but that URL: the document names this server as its root.
It describes only what the server answers (`comments.analyze`), and, like Google's,
it is public: it says how to call, never what was scored.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from agile.serve.errors import ApiError

router = APIRouter()

API, VERSION = "commentanalyzer", "v1alpha1"


def _object(name: str, description: str, **properties) -> dict:
    return {"id": name, "type": "object", "description": description, "properties": properties}


def _ref(name: str) -> dict:
    return {"$ref": name}


def _string(description: str) -> dict:
    return {"type": "string", "description": description}


SCHEMAS = {s["id"]: s for s in (
    _object("TextEntry", "A comment.", text=_string("The comment text."),
            type=_string("PLAIN_TEXT, the only type served.")),
    _object("Context", "Accepted and not used: the policies score the comment alone.",
            entries={"type": "array", "items": _ref("TextEntry")}),
    _object("AttributeParameters", "Options for one requested attribute.",
            scoreType=_string("PROBABILITY, the only type served."),
            scoreThreshold={"type": "number", "format": "float",
                            "description": "Scores below it are left out of the response."}),
    _object("AnalyzeCommentRequest", "One comment and the attributes to score it for.",
            comment=_ref("TextEntry"), context=_ref("Context"),
            requestedAttributes={"type": "object", "additionalProperties": _ref("AttributeParameters"),
                                 "description": "Attribute name -> its options; GET /v1alpha1/attributes lists "
                                                "the names this server scores."},
            spanAnnotations={"type": "boolean"}, doNotStore={"type": "boolean"},
            languages={"type": "array", "items": {"type": "string"}},
            clientToken=_string("Echoed back."), sessionId={"type": "string"}, communityId={"type": "string"}),
    _object("Score", "A calibrated probability.", value={"type": "number", "format": "float"},
            type=_string("PROBABILITY")),
    _object("SpanScore", "The whole comment: the policies score comments, not spans.",
            begin={"type": "integer", "format": "int32"}, end={"type": "integer", "format": "int32"},
            score=_ref("Score")),
    _object("AttributeScores", "One attribute's score.", summaryScore=_ref("Score"),
            spanScores={"type": "array", "items": _ref("SpanScore")}),
    _object("AnalyzeCommentResponse", "The scores of the requested attributes.",
            attributeScores={"type": "object", "additionalProperties": _ref("AttributeScores")},
            languages={"type": "array", "items": {"type": "string"}},
            trainedLanguages={"type": "array", "items": {"type": "string"}},
            clientToken={"type": "string"}),
)}

QUERY_PARAMETERS = {
    "key": {"type": "string", "location": "query", "description": "API key (AGILE_API_KEYS)."},
    "alt": {"type": "string", "location": "query", "default": "json", "enum": ["json"],
            "description": "Response format: JSON only."},
    "prettyPrint": {"type": "boolean", "location": "query", "default": "true", "description": "Ignored."},
    "fields": {"type": "string", "location": "query", "description": "Ignored: the whole response is sent."},
}


def document(root_url: str) -> dict:
    """The discovery document with `root_url` (this server, as the client reached it) as its root."""
    return {
        "kind": "discovery#restDescription", "discoveryVersion": "v1", "id": f"{API}:{VERSION}",
        "name": API, "version": VERSION, "title": "Perspective Comment Analyzer API (agile serve)",
        "description": "Perspective-compatible comment scoring by agile policies, self-hosted. See docs/API.md.",
        "protocol": "rest", "rootUrl": root_url, "servicePath": "", "baseUrl": root_url, "batchPath": "batch",
        "parameters": QUERY_PARAMETERS, "schemas": SCHEMAS,
        "resources": {"comments": {"methods": {"analyze": {
            "id": f"{API}.comments.analyze", "path": f"{VERSION}/comments:analyze",
            "flatPath": f"{VERSION}/comments:analyze", "httpMethod": "POST", "parameters": {},
            "parameterOrder": [], "request": _ref("AnalyzeCommentRequest"),
            "response": _ref("AnalyzeCommentResponse"),
            "description": "Score one comment for the requested attributes.",
        }}}},
    }


@router.get("/$discovery/rest", include_in_schema=False)
async def discovery(request: Request, version: str = VERSION) -> dict:
    if version != VERSION:
        raise ApiError(404, f"no discovery document for version {version!r}; this server has {VERSION}")
    return document(str(request.base_url))
