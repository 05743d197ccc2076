"""The Lua filter after ext_proc: what Envoy does with a request body on its own.

Two jobs, both needing the (already buffered) JSON body, neither needing the classifier:

- **fail-open that still serves** (`envoy.unclassified`): a request that reaches it without
  `x-cascade-tier` was not decided (the classifier is down, stopped or too slow, and ext_proc
  failed open; clients cannot send the header, it is removed before routing). It takes the
  default tier's route, so its top-level `model` is set to the default tier's model
  (`rewrite`), left alone (`pass`), or the request is answered with an OpenAI-style 503
  (`reject`). A body that is not a JSON object is passed on unchanged (the backend answers it).
- **a time-to-first-token limit for streamed requests** (`envoy.retries.stream_per_try_timeout_ms`):
  a body with top-level `"stream": true` gets `x-envoy-upstream-rq-per-try-timeout-ms`. Envoy's
  per-try timeout runs until the response headers, and a streamed answer sends them with the
  first token, so a stalled tier is retried (falls back) while a long stream is never cut.

The JSON is not parsed into Lua values: a scanner walks the top-level members (strings and
nested values are skipped with `string.find`, in C), so the cost is one pass over the body.
"""

from __future__ import annotations

import json

from extproc.config.snapshot import Snapshot

#: The body of the 503 in `reject` mode (OpenAI's error shape).
REJECT_BODY = json.dumps(
    {
        "error": {
            "message": "The model router cannot classify requests right now; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "classifier_unavailable",
        }
    },
    separators=(",", ":"),
)

#: Set on a request whose model the filter rewrote (seen by the backend, the access log's
#: `reason` and the client's `x-cascade-reason`).
UNCLASSIFIED_REASON = "unclassified"

_SCRIPT = r"""
-- Rendered by `cascade render envoy` (extproc/gateway/lua.py); do not edit by hand.
local MODE = @MODE@
local MODEL = @MODEL@
local STREAM_TIMEOUT_MS = @STREAM@
local REJECT_BODY = @REJECT@
local REASON = @REASON@

local function skip_ws(s, i)
  return string.find(s, "[^ \t\r\n]", i)
end

-- s[i] is '"': the index after the closing quote
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if k == nil then return nil end
    if string.byte(s, k) == 34 then return k + 1 end
    j = k + 2
  end
end

-- the index after the JSON value starting at s[i]
local function value_end(s, i)
  local c = string.byte(s, i)
  if c == 34 then return string_end(s, i) end
  if c == 123 or c == 91 then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[%[%]{}"]', j)
      if k == nil then return nil end
      local d = string.byte(s, k)
      if d == 34 then
        j = string_end(s, k)
        if j == nil then return nil end
      else
        if d == 123 or d == 91 then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return string.find(s, "[,}%]%s]", i)
end

-- the top-level members of a JSON object as {key, value start, value end}; nil if s is not one
local function members(s)
  local i = skip_ws(s, 1)
  if i == nil or string.byte(s, i) ~= 123 then return nil end
  local found = {}
  i = skip_ws(s, i + 1)
  if i ~= nil and string.byte(s, i) == 125 then return found end
  while i ~= nil do
    if string.byte(s, i) ~= 34 then return nil end
    local key_end = string_end(s, i)
    if key_end == nil then return nil end
    local key = string.sub(s, i + 1, key_end - 2)
    i = skip_ws(s, key_end)
    if i == nil or string.byte(s, i) ~= 58 then return nil end
    local v = skip_ws(s, i + 1)
    if v == nil then return nil end
    local e = value_end(s, v)
    if e == nil then return nil end
    found[#found + 1] = {key, v, e}
    i = skip_ws(s, e)
    if i == nil then return nil end
    local c = string.byte(s, i)
    if c == 125 then return found end
    if c ~= 44 then return nil end
    i = skip_ws(s, i + 1)
  end
  return nil
end

-- s with every top-level "model" set to MODEL (added first when there is none)
local function with_model(s, found)
  local parts, last = {}, 1
  for _, m in ipairs(found) do
    if m[1] == "model" then
      parts[#parts + 1] = string.sub(s, last, m[2] - 1)
      parts[#parts + 1] = MODEL
      last = m[3]
    end
  end
  if last == 1 then
    local brace = skip_ws(s, 1)
    local sep = ""
    if #found > 0 then sep = "," end
    return string.sub(s, 1, brace) .. '"model":' .. MODEL .. sep .. string.sub(s, brace + 1)
  end
  parts[#parts + 1] = string.sub(s, last)
  return table.concat(parts)
end

function envoy_on_request(handle)
  local decided = handle:headers():get("x-cascade-tier") ~= nil
  if not decided and MODE == "reject" then
    handle:respond(
      {[":status"] = "503", ["content-type"] = "application/json", ["retry-after"] = "1"},
      REJECT_BODY)
    return
  end
  local rewrite = not decided and MODE == "rewrite"
  if not rewrite and STREAM_TIMEOUT_MS == "" then return end
  local body = handle:body()
  if body == nil then return end
  local size = body:length()
  if size == 0 then return end
  local s = body:getBytes(0, size)
  local streamed = STREAM_TIMEOUT_MS ~= "" and string.find(s, '"stream"', 1, true) ~= nil
  if not rewrite and not streamed then return end
  local found = members(s)
  if found == nil then return end
  -- (a headers object taken before body() is out of scope after it)
  local headers = handle:headers()
  if streamed then
    for _, m in ipairs(found) do
      if m[1] == "stream" and string.sub(s, m[2], m[3] - 1) == "true" then
        headers:replace("x-envoy-upstream-rq-per-try-timeout-ms", STREAM_TIMEOUT_MS)
      end
    end
  end
  if rewrite then
    local new = with_model(s, found)
    body:setBytes(new)
    if headers:get("content-length") ~= nil then
      headers:replace("content-length", tostring(#new))
    end
    headers:replace("x-cascade-reason", REASON)
  end
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal of `text`: a long bracket (`[==[...]==]`, no escapes) when it is
    printable, else quoted with every byte outside printable ASCII as `\\ddd`."""
    if text.isprintable() and "]==]" not in text and not text.endswith("]="):
        return f"[==[{text}]==]"
    out = []
    for byte in text.encode():
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def unclassified_mode(snapshot: Snapshot) -> str:
    mode = snapshot.envoy.unclassified
    if mode == "auto":
        return "rewrite" if snapshot.server.rewrite_model else "pass"
    return mode


def script(snapshot: Snapshot) -> str | None:
    """The filter's source, or None when it has nothing to do."""
    mode = unclassified_mode(snapshot)
    stream_ms = snapshot.envoy.retries.stream_per_try_timeout_ms
    if mode == "pass" and not stream_ms:
        return None
    model = snapshot.tier(snapshot.default_tier).model
    values = {
        "@MODE@": lua_string(mode),
        "@MODEL@": lua_string(json.dumps(model, ensure_ascii=False)),
        "@STREAM@": lua_string(str(stream_ms) if stream_ms else ""),
        "@REJECT@": lua_string(REJECT_BODY),
        "@REASON@": lua_string(UNCLASSIFIED_REASON),
    }
    text = _SCRIPT.lstrip("\n")
    for key, value in values.items():
        text = text.replace(key, value)
    return text
