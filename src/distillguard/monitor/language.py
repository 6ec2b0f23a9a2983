"""Which language a prompt is written in, cheaply: a script test, then function words.

A multilingual harvest asks for the same capabilities in many languages; a person, an app
and even a translation service (whose *prompts* are in its source language) write in one or
two. The detector therefore keeps, per account, a count per language and reads its breadth.

No model and no data set: non-Latin scripts are told apart by Unicode ranges, Latin-script
languages by a handful of their most frequent function words (general knowledge, the same
for every provider). Cost: one pass over at most ``window`` characters; ASCII prompts skip the
script test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# Latin-script languages and function words that are frequent in them and rare in the others.
_FUNCTION_WORDS: dict[str, str] = {
    "en": "the and is are was what how you with this that for not have which",
    "es": "el los las una por para como pero est\u00e1 qu\u00e9 muy tambi\u00e9n porque "
    "espa\u00f1ol",
    "fr": "les des une est pour avec dans pas sur vous qui sont fran\u00e7ais tr\u00e8s",
    "de": "der die das und ist nicht ich sie mit auf f\u00fcr eine wie auch bitte deutsch",
    "it": "il della che non per sono una gli anche come perch\u00e9 italiano",
    "pt": "n\u00e3o uma para com que s\u00e3o est\u00e1 voc\u00ea tamb\u00e9m portugu\u00eas",
    "nl": "het een van niet zijn dat voor met ook wat nederlands",
}
# Non-Latin scripts: (name, first code point, last code point).
_SCRIPTS: tuple[tuple[str, int, int], ...] = (
    ("cyrillic", 0x0400, 0x04FF),
    ("greek", 0x0370, 0x03FF),
    ("arabic", 0x0600, 0x06FF),
    ("hebrew", 0x0590, 0x05FF),
    ("devanagari", 0x0900, 0x097F),
    ("thai", 0x0E00, 0x0E7F),
    ("hangul", 0xAC00, 0xD7AF),
    ("kana", 0x3040, 0x30FF),
    ("han", 0x4E00, 0x9FFF),
)
LANGUAGES: tuple[str, ...] = (*_FUNCTION_WORDS, *(s[0] for s in _SCRIPTS))
_WORD_LANG: dict[str, int] = {}
for _i, _lang in enumerate(_FUNCTION_WORDS):
    for _w in _FUNCTION_WORDS[_lang].split():
        _WORD_LANG.setdefault(_w, _i)
# One class of every non-Latin script's code points (most prompts have none: no match).
_NON_LATIN = re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for _, lo, hi in _SCRIPTS) + "]")
_WINDOW = 240  # characters read from each end (instructions and the user's own words)
_KANA = LANGUAGES.index("kana") - len(_FUNCTION_WORDS)


def prompt_language(text: str) -> int:
    """Index into ``LANGUAGES`` of the text's language, -1 when nothing tells."""
    if len(text) > 2 * _WINDOW:
        text = f"{text[:_WINDOW]} {text[-_WINDOW:]}"
    if not text.isascii():
        chars = _NON_LATIN.findall(text)
        if len(chars) >= 4:
            counts = [0] * len(_SCRIPTS)
            for ch in chars[:64]:
                o = ord(ch)
                for j, (_, lo, hi) in enumerate(_SCRIPTS):
                    if lo <= o <= hi:
                        counts[j] += 1
                        break
            best = max(range(len(_SCRIPTS)), key=counts.__getitem__)
            # Japanese mixes kana into Han: any kana makes it Japanese.
            return len(_FUNCTION_WORDS) + (_KANA if counts[_KANA] >= 2 else best)
    votes = [0] * len(_FUNCTION_WORDS)
    get = _WORD_LANG.get
    for w in text.lower().split():  # whitespace split runs in C; a lookup per word
        i = get(w)
        if i is not None:
            votes[i] += 1
    best = max(range(len(votes)), key=votes.__getitem__)
    return best if votes[best] >= 2 else -1


def language_breadth(counts: np.ndarray | Sequence[float], prior_weight: float) -> float:
    """Effective number of languages minus one (exp of the entropy - 1: 0 for one language,
    1 for two used alike), with ``prior_weight`` pseudo-prompts on the account's main one so
    that a handful of prompts in a second language do not count yet."""
    c = np.asarray(counts, dtype=np.float64).copy()  # (L,)
    if c.sum() <= 0:
        return 0.0
    c[int(np.argmax(c))] += prior_weight
    p = c / c.sum()
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()) - 1.0)
