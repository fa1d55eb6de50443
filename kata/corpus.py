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

The word lists, ``_small_table()`` and ``_story_table()`` (the grammars' tables) are given; write
``StoryGrammar`` and the functions. Spec: ``pytest --impl kata spec_tests/test_corpus.py``.
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
        transitions: ``{state: [Transition | (text, prob, next_state), ...]}`` (tuples are turned
            into ``Transition(*t)``); stored as ``self.transitions: dict[str, tuple[Transition, ...]]``.
        start: the start state, stored as ``self.start``.

    Errors (ValueError naming the state, e.g. ``state 's': probabilities must sum to 1, got 0.9``):
    ``start`` not a state (message names "start"); a ``next_state`` that is not a state (name it);
    a state with no transitions; a ``prob`` outside (0, 1]; probabilities of a state not summing to 1
    within ``PROB_TOLERANCE`` (say "sum"); an END transition (``next_state=None``) with text, or more
    than one END in a state; an empty text that is not END; two texts of a state where one is a
    prefix of the other (say "prefix").
    """

    def __init__(self, transitions: dict, start: str):
        raise NotImplementedError(
            "StoryGrammar.__init__: validate every state (see the class docstring), store transitions and start")

    @property
    def states(self) -> list[str]:
        """The state names, in table order."""
        raise NotImplementedError("StoryGrammar.states: list(self.transitions)")

    def sample_document(self, rng: random.Random) -> str:
        """One document: from ``start``, in each state draw ``u = rng.random()`` and take the FIRST
        transition (in list order) whose cumulative probability exceeds ``u`` (the last one if
        rounding leaves none); append its text and move on, until an END transition."""
        raise NotImplementedError("StoryGrammar.sample_document: walk from start; pick by cumulative probability")

    def documents(self, n: int, seed: int = DEFAULT_SEED) -> list[str]:
        """``n`` documents drawn one after another from ``random.Random(seed)``.

        Errors: ``checks.non_negative_int("n", n)``, ``checks.non_negative_int("seed", seed)``.
        """
        raise NotImplementedError("StoryGrammar.documents: one random.Random(seed), n calls of sample_document")

    def derivation(self, text: str) -> list[Transition] | None:
        """The unique path of transitions producing ``text`` (END last), or None if there is none.

        Greedy parse: at position ``i`` in state ``s``: if ``i == len(text)`` take the END transition
        of ``s`` (None if it has none); else take the transition with a non-empty text that starts at
        ``i`` (None if there is none). A non-str ``text`` is a TypeError.
        """
        raise NotImplementedError("StoryGrammar.derivation: parse greedily, END only at the end of the text")

    def log_prob(self, text: str) -> float:
        """NATURAL log of P(text): the sum of ``log(prob)`` over the derivation, END included;
        ``-math.inf`` when there is no derivation."""
        raise NotImplementedError("StoryGrammar.log_prob: sum of math.log(t.prob) over derivation(text)")

    def entropy_floor_bits_per_char(self, documents: list[str]) -> float:
        """``sum_d -log P(d) / ln 2 / stream_characters(documents)`` (bits per character, one
        separator per document counted). An empty list is a ValueError naming ``documents``."""
        raise NotImplementedError("StoryGrammar.entropy_floor_bits_per_char: -sum log_prob / ln 2 / characters")


def stream_characters(documents: list[str]) -> int:
    """Characters of the documents with one separator each: ``sum(len(d) + 1)``.

    Validation bits/char = (sum of target losses in nats over ``data.token_stream`` of the documents)
    / ln 2 / ``stream_characters(documents)``.
    """
    raise NotImplementedError("stream_characters: sum(len(d) + 1 for d in documents)")


def small_grammar() -> StoryGrammar:
    """A tiny acyclic grammar (6 states, 18 documents) whose documents can be enumerated:
    ``StoryGrammar(_small_table(), start="start")``."""
    raise NotImplementedError('small_grammar: StoryGrammar(_small_table(), start="start")')


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
    """The built-in story grammar: "Once upon a time, there was a girl named Mia. ...":
    ``StoryGrammar(_story_table(), start="start")``.

    States carry the main character (so the name and pronoun are repeated consistently) and the
    mood of the current event (found/saw/played with -> happy reactions, lost -> sad, wanted -> want).
    """
    raise NotImplementedError('story_grammar: StoryGrammar(_story_table(), start="start")')


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
    ``documents(n_val, 2 * seed + 1)`` (so the validation set does not depend on ``n_train``).

    Errors: ``checks.non_negative_int("n_train", ...)``, ``checks.positive_int("n_val", ...)``,
    ``checks.non_negative_int("seed", ...)``.
    """
    raise NotImplementedError("builtin_corpus: two documents() calls, seeds 2*seed and 2*seed + 1")
