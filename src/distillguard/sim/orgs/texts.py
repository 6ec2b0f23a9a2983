"""Text the apps of the world write themselves, built by rules: no data set holds it.

Translation sources in seven languages (a parallel lexicon, so the English answer is the real
translation of the synthetic source), code snippets from templates, ETL records, school
exercises, support tickets, the capability sweep a harvest walks through, and rule-based
paraphrases. Every builder takes a ``Random`` and returns plain strings.
"""

from __future__ import annotations

from importlib import resources
from random import Random

from distillguard.sim.orgs.sources import Sources

# --- a parallel lexicon: concept -> word in each language (English first) -------------------

LANGS = ("en", "es", "de", "fr", "pt", "it", "nl", "ru")
LANG_NAMES = {
    "en": "English",
    "es": "Spanish",
    "de": "German",
    "fr": "French",
    "pt": "Portuguese",
    "it": "Italian",
    "nl": "Dutch",
    "ru": "Russian",
}


def _load_lexicon() -> dict[str, list[tuple[str, ...]]]:
    """lexicon.tsv: one concept a line (slot, then its word in every language of ``LANGS``)."""
    table = resources.files("distillguard.sim.orgs").joinpath("lexicon.tsv").read_text("utf-8")
    lines = table.strip().splitlines()
    if tuple(lines[0].split("\t")[1:]) != LANGS:
        raise ValueError("lexicon.tsv columns must be: slot, then " + ", ".join(LANGS))
    slots: dict[str, list[tuple[str, ...]]] = {}
    for line in lines[1:]:
        slot, *words = line.split("\t")
        slots.setdefault(slot, []).append(tuple(words))
    return slots


_LEXICON = _load_lexicon()
_SUBJ, _VERB, _OBJ, _TIME = (_LEXICON[k] for k in ("subject", "verb", "object", "time"))
_TAIL = [*_LEXICON["tail"], ("",) * len(LANGS)]  # most sentences end without a tail


def parallel_text(rng: Random, lang: str, sentences: int) -> tuple[str, str]:
    """A synthetic business text in ``lang`` and its English translation (same concepts)."""
    li = LANGS.index(lang)
    src: list[str] = []
    en: list[str] = []
    for _ in range(sentences):
        parts = [
            rng.choice(_SUBJ),
            rng.choice(_VERB),
            rng.choice(_OBJ),
            rng.choice(_TIME),
            rng.choice(_TAIL),
        ]
        for out, i in ((src, li), (en, 0)):
            words = " ".join(p[i] for p in parts if p[i])
            out.append(words[0].upper() + words[1:] + ".")
    return " ".join(src), " ".join(en)


# --- code snippets ----------------------------------------------------------------------------

_PY_FUNCS = [
    """def {name}(items):
    result = []
    for item in items:
        if item.{attr} > {k}:
            result.append(item)
    return result
""",
    """def {name}(path):
    with open(path) as fh:
        rows = [line.split(',') for line in fh]
    return {{r[0]: float(r[{k}]) for r in rows[1:]}}
""",
    """class {cls}:
    def __init__(self, {attr}):
        self.{attr} = {attr}
        self.cache = {{}}

    def {name}(self, key):
        if key not in self.cache:
            self.cache[key] = self.{attr}.get(key, {k})
        return self.cache[key]
""",
    """async def {name}(session, url, retries={k}):
    for attempt in range(retries):
        resp = await session.get(url)
        if resp.status == 200:
            return await resp.json()
    raise RuntimeError(url)
""",
]
_JS_FUNCS = [
    ("function {name}(list) {{\n  return list.filter(x => x.{attr} > {k}).map(x => x.id);\n}}\n"),
    (
        "export async function {name}(id) {{\n  const res = await fetch(`/api/{attr}/${{id}}`);\n"
        "  if (!res.ok) throw new Error(res.status);\n  return res.json();\n}}\n"
    ),
]
_GO_FUNCS = [
    (
        "func {cls}{name}(xs []int) int {{\n\ttotal := 0\n\tfor _, x := range xs {{\n"
        "\t\tif x > {k} {{\n\t\t\ttotal += x\n\t\t}}\n\t}}\n\treturn total\n}}\n"
    ),
]
_SQL = [
    (
        "SELECT {attr}, COUNT(*) FROM orders WHERE created_at > NOW() - INTERVAL '{k} days' "
        "GROUP BY {attr} ORDER BY 2 DESC;"
    ),
]
_NAMES = [
    "load_rows",
    "filter_active",
    "merge_users",
    "parse_config",
    "fetch_report",
    "normalize",
    "dedupe",
    "build_index",
    "score_batch",
    "retry_fetch",
    "lookup",
]
_ATTRS = ["price", "score", "age", "status", "weight", "count", "region", "priority"]
_CLASSES = ["Store", "Cache", "Client", "Pipeline", "Registry", "Ledger"]
CODE_TASKS = [
    "Explain what this code does.",
    "Write unit tests for this code.",
    "Find the bug in this code and fix it.",
    "Refactor this to be more readable and add type hints.",
    "Add error handling to this function.",
    "Why is this slow on large inputs? Suggest a faster version.",
    "Add a docstring.",
    "Convert this to use async I/O.",
]


def code_snippet(rng: Random) -> tuple[str, str]:
    """(language, code) from our templates with fresh names."""
    lang = rng.choices(("python", "javascript", "go", "sql"), (6, 3, 1, 1))[0]
    pool = {"python": _PY_FUNCS, "javascript": _JS_FUNCS, "go": _GO_FUNCS, "sql": _SQL}[lang]
    code = rng.choice(pool).format(
        name=rng.choice(_NAMES),
        attr=rng.choice(_ATTRS),
        cls=rng.choice(_CLASSES),
        k=rng.randint(1, 90),
    )
    return lang, code


# --- ETL / classification records ------------------------------------------------------------

_PRODUCTS = [
    "wireless earbuds",
    "standing desk",
    "coffee grinder",
    "running shoes",
    "air fryer",
    "phone case",
    "office chair",
    "LED bulbs",
    "backpack",
    "yoga mat",
    "router",
]
_REVIEW_BITS = [
    "arrived two days late but works fine",
    "stopped working after a week",
    "great value",
    "the battery life is shorter than advertised",
    "exactly as described",
    "packaging was damaged",
    "customer service never answered",
    "would buy again",
    "smells like plastic",
    "setup took five minutes",
    "much louder than expected",
    "the color is off",
]
_TICKET_BITS = [
    "cannot log in since the update",
    "was charged twice",
    "need to change my shipping address",
    "the app crashes when I upload a photo",
    "how do I export my data",
    "please cancel my subscription",
    "refund has not arrived",
    "2FA code never comes",
]


def etl_record(rng: Random, kind: str) -> tuple[str, dict]:
    """(record text, expected JSON) for a review, ticket or invoice line."""
    if kind == "review":
        bits = rng.sample(_REVIEW_BITS, rng.randint(1, 3))
        stars = rng.randint(1, 5)
        prod = rng.choice(_PRODUCTS)
        text = f"{stars}/5 - {prod}: " + ", ".join(bits) + "."
        label = "positive" if stars >= 4 else "negative" if stars <= 2 else "neutral"
        return text, {"product": prod, "sentiment": label, "issues": len(bits)}
    if kind == "ticket":
        bit = rng.choice(_TICKET_BITS)
        oid = rng.randint(100000, 999999)
        text = f"Ticket #{oid}: Hi, I {bit}. Order {rng.randint(10**7, 10**8)}. Thanks"
        return text, {"ticket": oid, "category": bit.split()[0], "urgent": rng.random() < 0.2}
    qty, price = rng.randint(1, 40), round(rng.uniform(2, 900), 2)
    prod = rng.choice(_PRODUCTS)
    text = f"INV-{rng.randint(1000, 9999)}; {qty} x {prod} @ {price} EUR; net 30; VAT 19%"
    return text, {"item": prod, "quantity": qty, "unit_price": price, "currency": "EUR"}


# --- education exercises ----------------------------------------------------------------------

_SCIENCE = [
    "photosynthesis",
    "the water cycle",
    "plate tectonics",
    "Newton's second law",
    "cell division",
    "the French Revolution",
    "fractions",
    "the Pythagorean theorem",
    "electric circuits",
    "the causes of World War I",
    "chemical bonds",
    "ecosystems",
]


def school_exercise(rng: Random) -> tuple[str, str]:
    """(exercise prompt, short model answer) at middle/high-school level."""
    kind = rng.randrange(4)
    if kind == 0:
        a, x, b = rng.randint(2, 9), rng.randint(-10, 20), rng.randint(-20, 30)
        return (
            f"Solve for x: {a}x + {b} = {a * x + b}. Explain each step for a student.",
            f"Subtract {b} from both sides, divide by {a}: x = {x}.",
        )
    if kind == 1:
        topic = rng.choice(_SCIENCE)
        grade = rng.randint(5, 11)
        return (
            f"Explain {topic} to a grade {grade} student in simple words.",
            f"{topic.capitalize()} can be understood in three ideas. ",
        )
    if kind == 2:
        p, q = rng.randint(2, 40), rng.randint(2, 40)
        guess = p * q + rng.choice((0, 0, 1, -2, 10))
        return (
            f"A student answered {p} x {q} = {guess}. Is that right? Give a hint, not the "
            "answer, if it is wrong.",
            "Check the ones digit first." if guess != p * q else "Yes, that is correct.",
        )
    topic = rng.choice(_SCIENCE)
    return (
        f"Write 5 multiple-choice quiz questions about {topic} with the answer key.",
        "1. Which of the following... (A) ... Answer key: 1-B, 2-D, 3-A, 4-C, 5-B",
    )


# --- customer support -------------------------------------------------------------------------

_COMPANIES = ["Nimbus Telecom", "Parcelio", "BrightBank", "Homely Furniture", "Kettle Airlines"]
_SUPPORT_OPEN = [
    "my package {id} says delivered but I never got it",
    "I want to upgrade my plan",
    "the card ending {d4} was declined",
    "I need an invoice for order {id}",
    "my flight {fl} was cancelled, what are my options",
    "how do I reset my password",
    "the furniture arrived with a scratch, order {id}",
    "why did my bill go up this month",
]
_SUPPORT_FOLLOW = [
    "ok, and how long will that take?",
    "that didn't work",
    "thanks!",
    "can I talk to a human?",
    "yes, the email is the same as my account",
    "it was order {id}",
]


def support_turn(rng: Random, first: bool) -> str:
    tmpl = rng.choice(_SUPPORT_OPEN if first else _SUPPORT_FOLLOW)
    return tmpl.format(
        id=rng.randint(10**6, 10**7), d4=rng.randint(1000, 9999), fl=f"KA{rng.randint(100, 999)}"
    )


def support_system(company: str) -> str:
    return (
        f"You are the virtual assistant of {company}. Be brief and friendly. Never promise "
        "refunds; offer to open a ticket. Order data is in the conversation when known."
    )


# --- the capability sweep of a harvest --------------------------------------------------------

CAPABILITY_TOPICS = [
    "recursion in programming",
    "dynamic programming",
    "the TCP handshake",
    "SQL window functions",
    "Rust ownership",
    "gradient descent",
    "transformer attention",
    "Bayes' theorem",
    "eigenvalues",
    "the central limit theorem",
    "game theory",
    "supply and demand",
    "compound interest",
    "the Krebs cycle",
    "CRISPR",
    "general relativity",
    "quantum tunnelling",
    "the Roman Republic",
    "the Meiji Restoration",
    "the Cold War",
    "Kant's categorical imperative",
    "utilitarianism",
    "contract law basics",
    "GDPR",
    "hypertension treatment",
    "vaccines",
    "photosynthesis",
    "plate tectonics",
    "the Fourier transform",
    "public-key cryptography",
    "Docker networking",
    "Kubernetes scheduling",
    "React hooks",
    "Python generators",
    "regular expressions",
    "sorting algorithms",
    "graph shortest paths",
    "B-trees",
    "marketing funnels",
    "negotiation tactics",
    "writing a cover letter",
    "sonnet structure",
    "film noir",
    "jazz harmony",
    "chess openings",
    "nutrition for runners",
    "climate models",
    "inflation",
    "the stock market",
    "linear regression",
    "prime numbers",
    "probability puzzles",
]
CAPABILITY_TASKS = [
    "Explain {t} in detail with examples.",
    "Write a comprehensive tutorial on {t}.",
    "What are common misconceptions about {t}?",
    "Compare two approaches to {t}.",
    "Give me 10 exam questions about {t} with full answers.",
    "Summarize the key ideas of {t}.",
    "Write a Python program that demonstrates {t}.",
    "Explain {t} to a beginner, then to an expert.",
    "What is the history of {t}?",
    "Write an essay about {t}.",
]


def broad_prompt(r: Random, sources: Sources) -> str:
    """A draw from the whole capability space: people's prompts, sweeps, tasks, math."""
    k = r.random()
    if k < 0.4:
        return r.choice(sources.chat_prompts)
    if k < 0.65:
        return capability_prompt(r)
    if k < 0.85 and sources.t0_prompts:
        return r.choice(sources.t0_prompts)
    return r.choice(sources.gsm8k_train)[0]


def capability_prompt(rng: Random) -> str:
    return rng.choice(CAPABILITY_TASKS).format(t=rng.choice(CAPABILITY_TOPICS))


# --- rule-based paraphrase (a harvest that multiplies each seed prompt) -------------------------

_PARA_FRAMES = [
    "{p}",
    "Rephrase and then answer: {p}",
    "In your own words: {p}",
    "Question: {p}\nAnswer:",
    "Could you help me with this? {p}",
    "{p} Please be thorough.",
    "I was wondering, {lp}",
    "Answer the following as an expert would. {p}",
    "{p} (explain like I'm five)",
]
_SWAPS = [
    ("explain", "describe"),
    ("write", "compose"),
    ("what are", "which are"),
    ("how do", "in what way do"),
    ("give", "provide"),
    ("list", "enumerate"),
    ("good", "great"),
    ("best", "most effective"),
    ("help", "assist"),
]


def paraphrase(rng: Random, prompt: str) -> str:
    p = prompt
    for a, b in _SWAPS:
        if rng.random() < 0.5 and a in p.lower():
            i = p.lower().index(a)
            p = p[:i] + b + p[i + len(a) :]
    frame = rng.choice(_PARA_FRAMES)
    return frame.format(p=p, lp=p[:1].lower() + p[1:])


MULTILINGUAL_FRAMES = {
    "es": "Responde en español, con detalle:\n{p}",
    "de": "Bitte antworte ausführlich auf Deutsch:\n{p}",
    "fr": "Réponds en français de manière détaillée :\n{p}",
    "pt": "Responda em português, com detalhes:\n{p}",
    "it": "Rispondi in italiano in modo dettagliato:\n{p}",
    "nl": "Antwoord uitgebreid in het Nederlands:\n{p}",
    "ru": "Ответь подробно на русском языке:\n{p}",
}
