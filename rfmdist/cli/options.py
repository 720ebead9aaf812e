"""The estimator options of ``rfmdist fit``, generated from the estimators' parameter table.

Every parameter of :data:`rfmdist.estimators.PARAMETERS` that a command line can carry becomes an
option: its name (``--n-iter-no-change``), the values it accepts (the table's rules), its help (the
first sentence of the parameter's numpydoc entry) and its default (the estimators' signature) are
read from there, so they are written once. An option left out keeps the estimators' default.

Words on the command line: ``none`` for None (``all`` where None means every row: ``--centers``,
``--agop-samples``), ``true``/``false`` for a boolean that has a third choice (``--cache-kernel``);
plain booleans are flags (``--diag`` / ``--no-diag``).
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import dataclass
from typing import Any

from rfmdist.cli.errors import UsageError
from rfmdist.params import ArrayLike, Interval, NoneValue, Options, RandomState

#: Parameters the command line sets otherwise: ``device`` follows ``--gpus``.
NOT_OPTIONS = frozenset({"device"})
#: Options named otherwise than their parameter.
OPTION_NAMES = {"random_state": "seed"}
#: Where None means every row, the command line says ``all``.
NONE_WORDS = {"centers": "all", "agop_samples": "all"}
BOOL_WORDS = {"true": True, "false": False}


@dataclass(frozen=True)
class EstimatorOption:
    """One estimator parameter as a command-line option.

    Attributes
    ----------
    param : str
        The estimators' parameter.
    dest : str
        The ``argparse`` destination (``seed`` for ``random_state``).
    rules : tuple
        The parameter's rules (:mod:`rfmdist.params`).
    default : Any
        The estimators' default.
    help : str
    """

    param: str
    dest: str
    rules: tuple[Any, ...]
    default: Any
    help: str

    @property
    def flag(self) -> str:
        """``--name-with-dashes``."""
        return "--" + self.dest.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        """True for a plain boolean (``--diag`` / ``--no-diag``)."""
        return len(self.rules) == 1 and _words(self.rules[0]) == [True, False]

    @property
    def none_word(self) -> str:
        return NONE_WORDS.get(self.param, "none")

    def accepted(self) -> str:
        """What the option accepts, in command-line words."""
        parts = []
        for rule in self.rules:
            if isinstance(rule, Options):
                parts += [_word(v) for v in rule.values]
            elif isinstance(rule, NoneValue):
                parts.append(f"'{self.none_word}'")
            elif isinstance(rule, Interval):
                parts.append(rule.describe())
            elif isinstance(rule, RandomState):
                parts.append(f"an int seed or '{self.none_word}' (a random one)")
        return " or ".join(parts)

    def parse(self, value: Any) -> Any:
        """The parameter value of an option's text (values that are not text are taken as they
        are), checked against the rules.

        Raises
        ------
        UsageError
            The text does not parse, or the value is not one the parameter accepts.
        """
        parsed = self._from_text(value) if isinstance(value, str) else value
        if parsed is _INVALID or not any(rule.accepts(parsed) for rule in self.rules):
            raise UsageError(
                f"Expected {self.flag} to be {self.accepted()}, found {value!r}; fix the option."
            )
        return parsed

    def _from_text(self, text: str) -> Any:
        words: dict[str, Any] = {}
        for rule in self.rules:
            if isinstance(rule, Options):
                words |= {_word(v).strip("'"): v for v in rule.values}
            elif isinstance(rule, (NoneValue, RandomState)):
                words[self.none_word] = None
        if text.lower() in words:
            return words[text.lower()]
        kinds = [rule.kind for rule in self.rules if isinstance(rule, Interval)]
        kinds += [int for rule in self.rules if isinstance(rule, RandomState)]
        for kind in sorted(set(kinds), key=lambda k: k is float):  # int before float
            try:
                return kind(text)
            except ValueError:
                continue
        return _INVALID


_INVALID = object()


def _words(rule: Any) -> list[Any]:
    return list(rule.values) if isinstance(rule, Options) else []


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    return repr(value)


def estimator_options() -> list[EstimatorOption]:
    """The options, in the order of the estimators' signature."""
    from rfmdist.estimators import PARAMETERS, _RFMBase

    signature = inspect.signature(_RFMBase.__init__).parameters
    helps = parameter_help(_RFMBase.__doc__ or "")
    options = []
    for name, parameter in signature.items():
        if name not in PARAMETERS or name in NOT_OPTIONS:
            continue
        rules = tuple(r for r in PARAMETERS[name] if not isinstance(r, ArrayLike))
        options.append(
            EstimatorOption(
                param=name,
                dest=OPTION_NAMES.get(name, name),
                rules=rules,
                default=parameter.default,
                help=helps.get(name, ""),
            )
        )
    return options


def parameter_help(doc: str) -> dict[str, str]:
    """The first sentence of each entry of a numpydoc ``Parameters`` section.

    Examples
    --------
    >>> doc = '''
    ...     Parameters
    ...     ----------
    ...     reg : float, default=1e-3
    ...         Ridge ``lambda`` of rounds ``0 .. t``. Measured on ...
    ...     iters : int
    ...         Rounds (at most).
    ...
    ...     Attributes
    ...     ----------
    ... '''
    >>> parameter_help(doc)
    {'reg': 'Ridge lambda of rounds 0 .. t.', 'iters': 'Rounds (at most).'}
    """
    section = doc.split("Parameters\n", 1)[-1]
    section = re.split(r"\n\s*\n\s*[A-Z][a-z]+\n\s*-{3,}\n", section, maxsplit=1)[0]
    entries = re.findall(r"^ {4}(\w+) : [^\n]*\n((?: {8}[^\n]*\n?)+)", section, flags=re.M)
    helps = {}
    for name, body in entries:
        text = " ".join(line.strip() for line in body.splitlines())
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
        match = re.match(r"(.+?\.)(?=\s+[A-Z(]|$)", text)
        helps[name] = match.group(1) if match else text
    return helps


def add_estimator_options(group: Any) -> None:
    """Add every estimator option to an ``argparse`` group (defaults None: not given)."""
    for option in estimator_options():
        default = option.none_word if option.default is None else _word(option.default).strip("'")
        if option.is_flag:
            kwargs = {"action": argparse.BooleanOptionalAction}
            help_text = f"{option.help} Default: {default}."
        else:
            kwargs = {"metavar": "VALUE"}
            help_text = f"{option.help} Accepts {option.accepted()}; default: {default}."
        group.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            help=help_text.replace("%", "%%"),  # argparse formats help with %
            **kwargs,
        )


def estimator_params(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator parameters of the given options, checked against the parameter table; those
    left out take the estimators' defaults (read from their signature); ``device`` from ``--gpus``.

    Raises
    ------
    UsageError
        An option's value is not one its parameter accepts.
    """
    params: dict[str, Any] = {"device": "gpu" if getattr(args, "gpus", None) else "cpu"}
    for option in estimator_options():
        value = getattr(args, option.dest, None)
        params[option.param] = option.default if value is None else option.parse(value)
    return params
