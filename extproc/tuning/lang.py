"""Scripts, candidate terms and stop words, for keyword mining and per-language breakdowns.

No language model: the "language" of a text is its dominant script. `ko` = Hangul, `ja` = kana
(with or without Han), `zh` = Han without kana, `latin` = Latin letters (English stop words are
applied to it), `other` = any other letters, `none` = no letters.

Candidate terms follow how the classifier matches (a substring of the lower-cased text):

- Latin and other spaced scripts: words of at least 3 letters (lower case), minus stop words.
- Korean, Chinese and Japanese runs: character 2- and 3-grams, because the languages do not
  delimit words (Chinese, Japanese) or glue particles and endings to them (Korean: `리팩터링을`
  should yield `리팩터`). An n-gram is dropped when it is a stop n-gram of its language, when all
  its characters are function characters, or when it starts or ends with a particle.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

HANGUL = "ko"
HAN = "zh"
KANA = "ja"
LATIN = "latin"
OTHER = "other"
NONE = "none"

CJK_NGRAMS = (2, 3)
MIN_WORD = 3

_WORD = re.compile(r"[^\W\d_][^\W_]*")


def char_script(ch: str) -> str | None:
    """The script of one character, or None for digits, punctuation and spaces."""
    code = ord(ch)
    if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return HANGUL
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
        return HAN
    if 0x3040 <= code <= 0x30FF:
        return KANA
    if ch.isalpha():
        return LATIN if code < 0x0250 or 0x1E00 <= code <= 0x1EFF else OTHER
    return None


def detect_lang(text: str, sample: int = 2000) -> str:
    """The dominant script of (the first `sample` characters of) a text."""
    counts: dict[str, int] = {}
    for ch in text[:sample]:
        if ch.isascii():
            if ch.isalpha():
                counts[LATIN] = counts.get(LATIN, 0) + 1
            continue
        script = char_script(ch)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    total = sum(counts.values())
    if not total:
        return NONE
    # CJK characters carry more meaning than letters: a tenth of them decides.
    if counts.get(HANGUL, 0) * 10 >= total:
        return HANGUL
    if counts.get(KANA, 0) * 10 >= total:
        return KANA
    if counts.get(HAN, 0) * 10 >= total:
        return HAN
    return max(counts, key=lambda key: counts[key])


def terms(text: str, langs: frozenset[str] | None = None) -> set[str]:
    """Distinct candidate terms of a text (already lower-cased or not), per the rules above."""
    found: set[str] = set()
    for lang, run in _runs(text.lower()):
        if lang in (HANGUL, HAN, KANA):
            if langs is None or lang in langs:
                found.update(_ngrams(run, lang))
        else:
            for match in _WORD.finditer(run):
                word = match.group()
                if len(word) < MIN_WORD or word in STOP_WORDS[LATIN]:
                    continue
                if langs is None or term_lang(word) in langs:
                    found.add(word)
    return found


def term_lang(term: str) -> str:
    for ch in term:
        script = char_script(ch)
        if script is not None:
            return script
    return OTHER


def _runs(text: str) -> Iterator[tuple[str, str]]:
    """Maximal runs of CJK script characters, and the spans of everything else between them."""
    start = 0
    current: str | None = None
    for index, ch in enumerate(text):
        script = char_script(ch) if not ch.isascii() else None
        kind = script if script in (HANGUL, HAN, KANA) else None
        if kind != current:
            if index > start:
                yield (current or LATIN), text[start:index]
            start, current = index, kind
    if len(text) > start:
        yield (current or LATIN), text[start:]


def _ngrams(run: str, lang: str) -> Iterator[str]:
    stops = STOP_WORDS.get(lang, frozenset())
    function = FUNCTION_CHARS.get(lang, frozenset())
    edges = EDGE_CHARS.get(lang, frozenset())
    for size in CJK_NGRAMS:
        for start in range(len(run) - size + 1):
            gram = run[start : start + size]
            if gram in stops or gram[0] in edges or gram[-1] in edges:
                continue
            if all(ch in function for ch in gram):
                continue
            yield gram


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Stop words (Latin) and stop n-grams (CJK) per language.
STOP_WORDS: dict[str, frozenset[str]] = {
    LATIN: _words(
        """
        the and for are but not you all any can had her was one our out has him his how its
        may new now old see two way who did get let put say she too use that with have this
        will your from they know want been good much some time very when come here just like
        long make many more only over such take than them well were what which while would
        there their these those then into also about after again against because before being
        below between both could does doing down during each few further having itself myself
        most other ought same should themselves through under until where whom why yours
        ourselves yourself yourselves above off once own nor hers herself himself theirs
        answer question following please thanks thank hello give tell show write
        explain help need using used
        """
    ),
    HANGUL: _words(
        """
        니다 습니 합니 입니 있습 없습 됩니 하는 있는 없는 하고 하여 해서 해주 주세 세요 하세
        에서 으로 에게 한테 부터 까지 처럼 보다 이다 이고 이며 이나 이라 라고 다고 하다 했다
        한다 된다 되는 되어 대한 대해 위한 위해 같은 같이 그리 그러 그런 그래 그냥 이런 저런
        어떤 어떻 어떻게 무엇 무슨 알려 려주 려줘 주요 것을 것이 것은 수있 그리고 하지
        않는 않고 않아 는데 지만 면서 으면 다면 라면 해줘 해요 이에 요청 질문 다음 경우 때문
        """
    ),
    HAN: _words(
        """
        我们 你们 他们 她们 它们 一个 一些 这个 那个 这些 那些 什么 怎么 怎样 如何 为什 什么样
        可以 请问 是否 没有 已经 因为 所以 但是 如果 就是 还是 或者 以及 进行 使用 需要 帮我
        一下 问题 下面 以下 这里 那里 哪里 现在 时候 的是 是一 不是 也是 都是 还有 然后 之后
        之前 其中 其他 这样 那样 非常 应该 能够 可能 关于 对于 通过 根据 需要 出来 起来
        """
    ),
    KANA: _words(
        """
        です ます ました ません ください して する した され される ている てい いる ある あり
        これ それ あれ この その あの ここ そこ という として について による ため こと もの
        よう ので から まで けど けれ でし でき できる ない なく なる なり
        """
    ),
}

#: Characters that carry no topic on their own: an n-gram made only of them is dropped.
FUNCTION_CHARS: dict[str, frozenset[str]] = {
    HANGUL: frozenset(
        "이가은는을를의에와과도만로으로서고며면다요죠게지해한할하된될되있없그저것수등및"
    ),
    HAN: frozenset(
        "的了是在和与我你他她它这那也就都而及之其请吗呢吧啊一不有个为以对把被从到给让等中上下用会能要可很还又或所于如着过们么"
    ),
    KANA: frozenset("のにはをがでとともへやかなよねてたしだすまいうえおるれらり"),
}

#: Particles and endings: an n-gram starting or ending with one straddles a word boundary.
EDGE_CHARS: dict[str, frozenset[str]] = {
    HANGUL: frozenset("은는을를의에와과도요"),
    HAN: frozenset("的了吗呢吧啊着过请"),
    KANA: frozenset("のにはをがでとへやかよね"),
}
