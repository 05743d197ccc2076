"""Response-cache keys: what must be equal for a stored answer to be served again (pure).

Exact key: a hash of the tenant, the cache partition (epoch, classifier version) and the
canonical JSON of the request document without the ignored fields (`model`, `stream`,
`stream_options` by default): every message with its role, tool calls and parts, `tools`,
`response_format`, sampling parameters, `max_tokens`, `n`, `seed`, ... Two requests get the same
key only if they are the same request.

Semantic bucket: the same hash over everything *but the last user message*, plus the last user
message's `facts` (numbers, number words, code identifiers, quoted strings, code blocks,
negations, polarity words, option lines). Near-duplicates are only ever compared inside one
bucket, so two questions that differ in a number, an option or a negation can never match,
however similar their wording (`extproc.core.similarity` compares the rest).

The tenant is an HMAC of a configured identity under a server-side secret: a key never reveals
the identity, and one tenant's keys cannot be computed by another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

#: Request fields left out of the key unless configured otherwise.
DEFAULT_IGNORE = ("model", "stream", "stream_options")


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """The keys of one request: `exact` always; `bucket` and `text` when the semantic tier may
    compare it (the last message is the user's and has text)."""

    exact: str
    bucket: str | None
    text: str


def tenant_of(secret: bytes, identity: str) -> str:
    """The tenant partition of an identity (a user header value, an API-key hash)."""
    return hmac.new(secret, identity.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[
        :32
    ]


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def request_keys(
    document: Mapping[str, object],
    tenant: str,
    partition: str,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    *,
    semantic: bool = True,
    max_text: int = 1 << 30,
) -> CacheKeys:
    """The keys of a parsed chat request (`document` as decoded; it is not modified).

    `semantic=False`, or a last user message over `max_text` characters: the exact key only
    (no bucket, no facts: the cheap path)."""
    skipped = set(ignore)
    kept = {name: value for name, value in document.items() if name not in skipped}
    head = (tenant + "\x00" + partition).encode()
    exact = _digest(b"exact", head, orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
    messages = kept.get("messages")
    text = _last_user_text(messages) if semantic else None
    if text is None or len(text) > max_text or not isinstance(messages, list):
        return CacheKeys(exact, None, "")
    kept["messages"] = messages[:-1]
    prefix = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
    bucket = _digest(b"semantic", head, prefix, facts(text).encode())
    return CacheKeys(exact, bucket, text)


def _last_user_text(messages: object) -> str | None:
    """The last message's text when it is a user message of text only, else None."""
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user" or set(last) - {"role", "content"}:
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or set(part)
                - {
                    "type",
                    "text",
                }
            ):
                return None  # images, audio, files: compared exactly only
            piece = part.get("text")
            if not isinstance(piece, str):
                return None
            texts.append(piece)
        joined = "\n".join(texts)
        return joined if joined.strip() else None
    return None


# -- the lexical guard ---------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_CJK_NUMERALS = re.compile(r"[零〇一二两三四五六七八九十百千万亿半]+")
_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_QUOTED = re.compile(
    r"\"([^\"\n]{1,300})\"|(?<![\w'])'([^'\n]{1,300})'(?![\w'])|“([^”\n]{1,300})”|‘([^’\n]{1,300})’"
    r"|「([^」\n]{1,300})」|『([^』\n]{1,300})』|«([^»\n]{1,300})»"
)
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::|->)[A-Za-z_][A-Za-z0-9_]*)*(?:\(\))?")
_OPTION = re.compile(r"^\s*(?:\(?[A-Za-z0-9]{1,2}[.):]|[-*•])\s+\S.*$", re.MULTILINE)
#: words for the word lists: punctuation and compound separators (`two-thirds`, `and/or`)
#: become spaces, apostrophes vanish (`isn't` -> `isnt`)
#: `two's complement` counts the word `two`
_POSSESSIVE = re.compile(r"'s\b")
#: (whitespace needs no entry: `split()` breaks there anyway)
_BREAKS = '"`.,;:!?()[]{}<>«»“”「」『』、。，！？：；（）-‐‑–—…*_~#/\\|=+'
_WORD_BREAK = str.maketrans(dict.fromkeys(_BREAKS, " ") | {"'": None})

_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty "
    "ninety hundred thousand million billion trillion half halves third thirds quarter quarters "
    "twice thrice double triple quadruple dozen dozens once first second fifth tenth "
    "하나 둘 셋 넷 다섯 여섯 일곱 여덟 아홉 열 스물 서른 마흔 쉰 백 천 만 억 절반 두배".split()
)
_NEGATIONS = frozenset(
    "not no never none nothing nobody nowhere neither nor without except cannot cant dont "
    "doesnt didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt "
    "mustnt neednt non unless exclude excluding excluded "
    "않 안 못 없 아니 말고 제외 不 没 沒 别 別 非 无 無 未 勿 否".split()
)
#: words whose opposite changes the answer while the rest of the question stays the same
_POLARITY = frozenset(
    "largest smallest biggest greatest least most maximum minimum max min highest lowest "
    "more less fewer greater larger smaller higher lower before after above below increase "
    "decrease increases decreases true false correct incorrect best worst first last earliest "
    "latest oldest newest youngest longest shortest fastest slowest cheapest always sometimes "
    "inside outside ascending descending left right".split()
)
_LISTED = _NUMBER_WORDS | _NEGATIONS | _POLARITY
#: the openers `_QUOTED` looks for beyond ASCII
_QUOTES = "“‘「『«"
_CJK_RANGE = re.compile("[\u3000-\U0010ffff]")
_CJK_NEGATION = re.compile(r"[不没沒别別非无無未勿否]|않|안\s|못|없|아니|말고|제외")


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def facts(text: str) -> str:
    """What must be equal, verbatim, for two last user messages to be near-duplicates.

    A canonical string: every fact family sorted (the order of sentences may change in a
    paraphrase, their numbers may not), option and code lines in order.
    """
    raw = unicodedata.normalize("NFKC", text)
    blocks = [_normal(block) for block in _CODE_BLOCK.findall(raw)]
    prose = _CODE_BLOCK.sub(" ", raw)
    inline = sorted(_normal(code) for code in _INLINE_CODE.findall(prose))
    ascii_only = prose.isascii()
    quoted = (
        sorted(_normal(next(g for g in groups if g)) for groups in _QUOTED.findall(prose))
        if '"' in prose or "'" in prose or (not ascii_only and _has_any(prose, _QUOTES))
        else []
    )
    # Hangul and Han (what the CJK expressions look for) are all at U+3000 and above
    cjk = not ascii_only and _CJK_RANGE.search(prose) is not None
    numbers = sorted(_NUMBER.findall(prose))
    if cjk:
        numbers += sorted(_CJK_NUMERALS.findall(prose))
    identifiers = sorted(
        token
        for token in set(_TOKEN.findall(prose))
        if (not token.isalpha() or not (token.islower() or token.isupper() or token.istitle()))
        and token.strip("_")
    )
    options = [_normal(line) for line in _OPTION.findall(prose)] if "\n" in prose else []
    folded = _POSSESSIVE.sub("", prose.casefold().replace("\u2019", "'").replace("\u2018", "'"))
    words = [word for word in folded.translate(_WORD_BREAK).split() if word in _LISTED]
    number_words = _listed(words, _NUMBER_WORDS)
    negations = _listed(words, _NEGATIONS)
    if cjk:
        negations = sorted(negations + _CJK_NEGATION.findall(prose))
    polarity = _listed(words, _POLARITY)
    families = (blocks, inline, quoted, numbers, identifiers, options, number_words, negations)
    return "\x1e".join("\x1f".join(family) for family in (*families, polarity))


def _listed(words: list[str], listed: frozenset[str]) -> list[str]:
    """The listed words present, each as often as it occurs, sorted."""
    return sorted(word for word in words if word in listed)


def _has_any(text: str, characters: str) -> bool:
    return any(character in text for character in characters)
