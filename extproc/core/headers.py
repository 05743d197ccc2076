"""Names of the headers the router reads and writes, in one place."""

from __future__ import annotations

#: Every header the router owns starts with this; client-sent ones are never trusted.
PREFIX = "x-cascade-"
#: The chosen tier; Envoy's routes match on it.
TIER = "x-cascade-tier"
#: The classifier version that decided.
CLASSIFIER = "x-cascade-classifier"
#: Short reason, e.g. `keyword:refactor`, `long_text:chars>500`, `default`, `unparsed`.
REASON = "x-cascade-reason"
#: A scorer step's calibrated probability (3 decimals) at the boundary that decided.
SCORE = "x-cascade-score"
#: The response cache's verdict: `hit` (answered by the server), `miss`, `bypass`, `skip`, `audit`.
CACHE = "x-cascade-cache"
#: Envoy's request id, used in logs and as the canary key when no user key is sent.
REQUEST_ID = "x-request-id"
PATH = ":path"
METHOD = ":method"
CONTENT_TYPE = "content-type"
CONTENT_LENGTH = "content-length"
#: Set by Envoy's mirror policy on shadow copies: the tier the original request was routed to.
SHADOW_OF = "x-cascade-shadow-of"
#: gRPC initial metadata naming the role of an ext_proc stream; `upstream` = per-attempt filter.
ROLE_METADATA = "x-cascade-role"
ROLE_UPSTREAM = "upstream"
#: gRPC initial metadata of the classifier's ext_proc stream: the fingerprint of the tiers the
#: rendered Envoy config routes (extproc/config/drift.py).
ROUTES_METADATA = "x-cascade-routes"
STATUS = ":status"
#: Response headers Envoy's routes add: the decided tier and the cluster that served.
SERVED_TIER = "x-cascade-served-tier"
SERVED_CLUSTER = "x-cascade-served-cluster"
#: W3C trace context, read from the request and set on the way upstream.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Confidence gate: set on a held answer that failed the gate (the route retries it on the next
#: tier); on the client's answer, the escalation (`weak->strong`) and the gated confidence.
ESCALATE = "x-cascade-escalate"
ESCALATED = "x-cascade-escalated"
CONFIDENCE = "x-cascade-confidence"
#: Set by the classifier on a request its tier's gate will judge: `answer` or `stream`, plus
#: `;near` when a scorer decided close to its threshold (the `near_threshold` policy).
GATE = "x-cascade-gate"
