"""User-facing errors.

Anything a researcher can cause by bad input (a config value, a file) raises an
``AcslError`` subclass with a one-line message naming the file or key. The CLI turns
these into ``error: ...`` and exit code 2; library callers get ordinary exceptions.
"""

import difflib
import re
from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """``"did you mean X? "`` for the closest of ``choices``, else ``""``: a typo
    (difflib, ratio >= 0.75), or the same words in another order (``circle_red``)."""
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.75)
    if not close:
        def words(s: str) -> list[str]:
            return sorted(w for w in re.split(r"[\W_]+", s.lower()) if w)

        close = [c for c in options if words(c) == words(str(word))][:1]
    return f"did you mean {close[0]}? " if close else ""


class AcslError(Exception):
    """Base class of errors caused by user input, reported without a traceback."""


class ConfigError(AcslError, ValueError):
    """A bad configuration value: unknown name, out-of-range number, missing parameter."""


class DataError(AcslError, ValueError):
    """A bad or missing input file: annotations, images, results, checkpoints."""


class TrainingDiverged(AcslError, FloatingPointError):
    """A loss became non-finite or exploded: the run stops (exit code 1), nothing is saved."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM (timeout, Slurm, docker stop), raised in the main thread like Ctrl-C. As with
    ``KeyboardInterrupt``, a message (if any) says what happened to work left running."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop as Ctrl-C would, through every ``finally`` and cleanup."""
    raise Terminated
