"""The built-in corpus: simple English stories from a probabilistic story grammar with KNOWN probabilities.

The grammar is a deterministic probabilistic automaton over text pieces. Each state has a list of
``Transition(text, prob, next_state)``: the automaton emits ``text`` with probability ``prob`` and
moves to ``next_state``. A transition with ``next_state=None`` is the END of the document; it emits
nothing (``text == ""``). A document is the concatenation of the emitted texts from ``start`` to END::

    P(doc) = prod over the path of prob        (END's probability included)

**The text determines its derivation.** In every state the non-empty texts are prefix-free (no text
is a prefix of another), and END is taken only when the whole text has been read. So parsing is
greedy and unique: at position ``i`` in state ``s``, if ``i == len(text)`` take END (impossible if
``s`` has none), else take the one transition whose text starts at ``i`` (impossible if none).
Hence ``log_prob(text)`` is exact, and ``-inf`` for a text the grammar cannot produce.

**Entropy floor.** Training concatenates documents with an end-of-text separator after each one
(``data.token_stream``), so a model must predict every character of a document AND its separator.
Counting the separator as one character, the best validation loss any model can reach on documents
``docs``, in bits per character, is::

    floor(docs) = sum_d -log2 P(d) / sum_d (len(d) + 1)        (stream_characters(docs))

On a sample this is the exact optimum (the true distribution minimises expected log loss), and as
the sample grows it tends to the entropy rate of the grammar per character.

Sampling uses ``random.Random`` (pure Python, identical on every machine): ``documents(n, seed)``
draws ``n`` documents from ``random.Random(seed)``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from . import checks

#: Default sizes and seed of the built-in corpus used by ``bare-lm train`` with no data argument.
DEFAULT_TRAIN_DOCUMENTS = 20000
DEFAULT_VAL_DOCUMENTS = 1000
DEFAULT_SEED = 0

#: Probabilities of a state must sum to 1 within this tolerance.
PROB_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Transition:
    """Emit ``text`` with probability ``prob`` and move to ``next_state`` (None = END, text "")."""

    text: str
    prob: float
    next_state: str | None


class StoryGrammar:
    """A deterministic probabilistic automaton whose documents determine their own derivation.

    Args:
        transitions: ``{state: [Transition | (text, prob, next_state), ...]}``.
        start: the start state.

    Errors (ValueError naming the state): unknown ``start`` or ``next_state``; a state with no
    transitions; a probability outside (0, 1]; probabilities not summing to 1; an END transition
    with text, or more than one END; an empty text that is not END; texts of one state that are
    not prefix-free.
    """

    def __init__(self, transitions: dict, start: str):
        if not isinstance(transitions, dict) or not transitions:
            raise ValueError("transitions must be a non-empty dict {state: [Transition, ...]}")
        if start not in transitions:
            raise ValueError(f"start state {start!r} is not one of the states")
        self.start = start
        self.transitions: dict[str, tuple[Transition, ...]] = {}
        for state, options in transitions.items():
            options = tuple(t if isinstance(t, Transition) else Transition(*t) for t in options)
            _check_state(state, options, transitions)
            self.transitions[state] = options

    @property
    def states(self) -> list[str]:
        return list(self.transitions)

    def sample_document(self, rng: random.Random) -> str:
        """One document: walk from ``start``, choosing each transition with its probability, until END."""
        state, pieces = self.start, []
        while state is not None:
            options = self.transitions[state]
            u = rng.random()                       # uniform in [0, 1)
            chosen = options[-1]                   # guards against rounding in the cumulative sum
            cumulative = 0.0
            for t in options:
                cumulative += t.prob
                if u < cumulative:
                    chosen = t
                    break
            pieces.append(chosen.text)
            state = chosen.next_state
        return "".join(pieces)

    def documents(self, n: int, seed: int = DEFAULT_SEED) -> list[str]:
        """``n`` documents drawn one after another from ``random.Random(seed)``."""
        checks.non_negative_int("n", n)
        checks.non_negative_int("seed", seed)
        rng = random.Random(seed)
        return [self.sample_document(rng) for _ in range(n)]

    def derivation(self, text: str) -> list[Transition] | None:
        """The unique path of transitions producing ``text`` (END last), or None if there is none."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        state, i, path = self.start, 0, []
        while state is not None:
            options = self.transitions[state]
            if i == len(text):
                step = next((t for t in options if t.next_state is None), None)
            else:
                step = next((t for t in options if t.text and text.startswith(t.text, i)), None)
            if step is None:
                return None
            path.append(step)
            i += len(step.text)
            state = step.next_state
        return path if i == len(text) else None

    def log_prob(self, text: str) -> float:
        """Natural log of P(text), END included; ``-inf`` when the grammar cannot produce ``text``."""
        path = self.derivation(text)
        if path is None:
            return -math.inf
        return sum(math.log(t.prob) for t in path)

    def entropy_floor_bits_per_char(self, documents: list[str]) -> float:
        """``sum_d -log2 P(d) / sum_d (len(d) + 1)``: the best bits/char on ``documents`` + separators."""
        if len(documents) == 0:
            raise ValueError("documents must be a non-empty list of documents")
        nats = -sum(self.log_prob(d) for d in documents)
        return nats / math.log(2) / stream_characters(documents)


def stream_characters(documents: list[str]) -> int:
    """Characters of the documents with one separator each: ``sum(len(d) + 1)``.

    Validation bits/char = (sum of target losses in nats over ``data.token_stream`` of the documents)
    / ln 2 / ``stream_characters(documents)``.
    """
    return sum(len(d) + 1 for d in documents)


def small_grammar() -> StoryGrammar:
    """A tiny acyclic grammar (6 states, 18 documents) whose documents can be enumerated."""
    return StoryGrammar(_small_table(), start="start")


def _small_table() -> dict[str, list[Transition]]:
    return {
        "start": [Transition("Mia", 0.6, "verb"), Transition("Tom", 0.4, "verb")],
        "verb": [Transition(" ran", 0.7, "end"), Transition(" sat", 0.2, "end"),
                 Transition(" saw a cat", 0.1, "cat")],
        "cat": [Transition(".", 0.5, "stop"), Transition("", 0.5, None)],
        "end": [Transition(".", 0.9, "stop2"), Transition("!", 0.1, "stop")],
        "stop": [Transition("", 0.8, None), Transition(" The end.", 0.2, "stop2")],
        "stop2": [Transition("", 1.0, None)],
    }


# --- the story grammar --------------------------------------------------------------------------

#: (name, pronoun, probability) of the main characters.
CHARACTERS = (("Mia", "She", 0.2), ("Lily", "She", 0.15), ("Anna", "She", 0.15),
              ("Tom", "He", 0.2), ("Sam", "He", 0.15), ("Ben", "He", 0.15))
OPENINGS = (("Once upon a time, there was a", 0.5), ("There was a", 0.3), ("One day, there was a", 0.2))
VERBS = ((" found a", 0.25, "happy"), (" saw a", 0.2, "happy"), (" played with a", 0.15, "happy"),
         (" lost a", 0.2, "sad"), (" wanted a", 0.2, "want"))
#: An object is described by an optional size, then a colour: " big red ball", " blue kite".
SIZES = ((" big", 0.15), (" small", 0.15), (" little", 0.1), (" tiny", 0.1))
COLOURS = ((" red", 0.2), (" blue", 0.2), (" green", 0.15), (" yellow", 0.15), (" pink", 0.15),
           (" brown", 0.15))
OBJECTS = ((" ball", 0.15), (" cat", 0.1), (" dog", 0.1), (" box", 0.1), (" kite", 0.1),
           (" bird", 0.1), (" book", 0.1), (" hat", 0.1), (" cake", 0.05), (" toy", 0.1))
PLACES = ((" in the garden", 0.15), (" in the park", 0.15), (" near the tree", 0.1), (" at home", 0.1),
          (" by the river", 0.15), (" at school", 0.1), (" under the bed", 0.1), (" on the hill", 0.15))
#: Probability that an event sentence ends " with FRIEND." (a friend among the other characters).
P_FRIEND = 0.5


def story_grammar() -> StoryGrammar:
    """The built-in story grammar: "Once upon a time, there was a girl named Mia. ...".

    States carry the main character (so the name and pronoun are repeated consistently) and the
    mood of the current event (found/saw/played with -> happy reactions, lost -> sad, wanted -> want).
    """
    return StoryGrammar(_story_table(), start="start")


def _story_table() -> dict[str, list[Transition]]:
    g: dict[str, list[Transition]] = {}
    g["start"] = [Transition(text, p, "kind") for text, p in OPENINGS]
    girls = [c for c in CHARACTERS if c[1] == "She"]
    boys = [c for c in CHARACTERS if c[1] == "He"]
    p_girl = sum(c[2] for c in girls)
    g["kind"] = [Transition(" girl named ", p_girl, "girl"), Transition(" boy named ", 1 - p_girl, "boy")]
    g["girl"] = [Transition(f"{n}.", p / p_girl, f"intro:{n}") for n, _, p in girls]
    g["boy"] = [Transition(f"{n}.", p / (1 - p_girl), f"intro:{n}") for n, _, p in boys]
    for name, she, _ in CHARACTERS:
        her = "her" if she == "She" else "his"
        c = name
        friends = [(n, p) for n, _, p in CHARACTERS if n != name]
        p_friends = sum(p for _, p in friends)
        g[f"intro:{c}"] = [
            Transition(f" {she} liked to play.", 0.3, f"event:{c}"),
            Transition(f" {she} had a dog.", 0.1, f"event:{c}"),
            Transition(f" {she} lived with {her} mom.", 0.1, f"event:{c}"),
            Transition(f" One day, {name}", 0.5, f"verb:{c}"),
        ]
        g[f"event:{c}"] = [Transition(f" One day, {name}", 0.4, f"verb:{c}"),
                           Transition(f" Every day, {name}", 0.2, f"verb:{c}"),
                           Transition(f" In the morning, {name}", 0.2, f"verb:{c}"),
                           Transition(f" At noon, {name}", 0.2, f"verb:{c}")]
        g[f"verb:{c}"] = [Transition(t, p, f"adj:{c}:{mood}") for t, p, mood in VERBS]
        for mood in ("happy", "sad", "want"):
            g[f"adj:{c}:{mood}"] = [Transition(t, p, f"colour:{c}:{mood}") for t, p in SIZES] + [
                Transition(t, p * (1 - sum(q for _, q in SIZES)), f"obj:{c}:{mood}") for t, p in COLOURS]
            g[f"colour:{c}:{mood}"] = [Transition(t, p, f"obj:{c}:{mood}") for t, p in COLOURS]
            g[f"obj:{c}:{mood}"] = [Transition(t, p, f"place:{c}:{mood}") for t, p in OBJECTS]
            g[f"place:{c}:{mood}"] = [Transition(t, p, f"with:{c}:{mood}") for t, p in PLACES]
            g[f"with:{c}:{mood}"] = [Transition(".", 1 - P_FRIEND, f"react:{c}:{mood}")] + [
                Transition(f" with {n}.", P_FRIEND * p / p_friends, f"react:{c}:{mood}") for n, p in friends]
        g[f"react:{c}:happy"] = [Transition(f" {she} was happy.", 0.25, f"more:{c}"),
                                 Transition(f" {she} smiled.", 0.25, f"more:{c}"),
                                 Transition(f" {she} laughed.", 0.2, f"more:{c}"),
                                 Transition(f" {she} said, \"Look!\"", 0.15, f"more:{c}"),
                                 Transition(" It was fun.", 0.15, f"more:{c}")]
        g[f"react:{c}:sad"] = [Transition(f" {she} was sad.", 0.6, f"more:{c}"),
                               Transition(f" {she} cried.", 0.4, f"more:{c}")]
        g[f"react:{c}:want"] = [Transition(f" {she} asked {her} mom.", 0.5, f"more:{c}"),
                                Transition(f" {she} looked for it.", 0.5, f"more:{c}")]
        g[f"more:{c}"] = [Transition(f" Then {name}", 0.25, f"verb:{c}"),
                          Transition(f" Later, {name}", 0.15, f"verb:{c}"),
                          Transition(f" After that, {name}", 0.15, f"verb:{c}"),
                          Transition(f" Next, {name}", 0.1, f"verb:{c}"),
                          Transition(f" At night, {name} went to bed.", 0.15, "end"),
                          Transition(" The end.", 0.2, "end")]
    g["end"] = [Transition("", 1.0, None)]
    return g


def builtin_corpus(n_train: int = DEFAULT_TRAIN_DOCUMENTS, n_val: int = DEFAULT_VAL_DOCUMENTS,
                   seed: int = DEFAULT_SEED) -> tuple[list[str], list[str]]:
    """``(train_docs, val_docs)`` from ``story_grammar()``: ``documents(n_train, 2 * seed)`` and
    ``documents(n_val, 2 * seed + 1)`` (so the validation set does not depend on ``n_train``)."""
    checks.non_negative_int("n_train", n_train)
    checks.positive_int("n_val", n_val)
    checks.non_negative_int("seed", seed)
    grammar = story_grammar()
    return grammar.documents(n_train, 2 * seed), grammar.documents(n_val, 2 * seed + 1)


def _check_state(state, options: tuple[Transition, ...], transitions: dict) -> None:
    if not options:
        raise ValueError(f"state {state!r} has no transitions")
    total = 0.0
    ends = 0
    for t in options:
        if isinstance(t.prob, bool) or not isinstance(t.prob, (int, float)) or not 0.0 < t.prob <= 1.0:
            raise ValueError(f"state {state!r}: prob of {t.text!r} must be in (0, 1], got {t.prob!r}")
        if not isinstance(t.text, str):
            raise TypeError(f"state {state!r}: text must be a str, got {type(t.text).__name__}")
        total += t.prob
        if t.next_state is None:
            ends += 1
            if t.text:
                raise ValueError(f"state {state!r}: the END transition must emit no text, got {t.text!r}")
        elif t.next_state not in transitions:
            raise ValueError(f"state {state!r}: next_state {t.next_state!r} is not one of the states")
        elif not t.text:
            raise ValueError(f"state {state!r}: only the END transition may emit no text")
    if ends > 1:
        raise ValueError(f"state {state!r} has {ends} END transitions, at most 1 is allowed")
    if abs(total - 1.0) > PROB_TOLERANCE:
        raise ValueError(f"state {state!r}: probabilities must sum to 1, got {total!r}")
    texts = [t.text for t in options if t.text]
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            if i != j and b.startswith(a):
                raise ValueError(f"state {state!r}: texts must be prefix-free, {a!r} is a prefix of {b!r}")
