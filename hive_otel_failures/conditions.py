"""Custom failure conditions: Hive's Goal constraints and success criteria, and the user's own, checked safely.

Hive declares ``Goal.constraints`` (hard or soft, with a ``check``) and ``Goal.success_criteria``
(``output_contains``, ``output_equals``, ``custom``, ``llm_judge``) but evaluates none of them.
This module does, on what one step (a graph node, a graph run, a colony worker, an agent loop)
produced, under the names ``output``, ``memory``, ``input``, ``tokens``, ``tool_calls`` (the
names of the tools called) and ``duration_s``.

A ``check`` is either an expression, evaluated by simpleeval with a short whitelist of
functions and methods, no dunder or private attribute, no import, and bounded cost (see
``compile_expression``), or the name of a function registered with ``register_condition`` or
under the ``hive_failures.conditions`` entry-point group. ``llm_judge`` is left to Hive's judge.

No Hive import: a Goal is read by its attribute names. Nothing here raises into the agent: a
condition that cannot be checked is logged once, counted in ``condition_stats()``, and does not count
as violated.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import simpleeval

from . import semconv

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hive_failures.conditions"
NAMES = ("output", "memory", "input", "tokens", "tool_calls", "duration_s")
MAX_EXPRESSION_CHARS = 1000  # also bounds the parser's recursion
MAX_POWER_BITS = 4096  # a ** b is refused when the result would need more bits than this
DEFAULT_TIMEOUT_S = 1.0  # a named check slower than this is broken (HIVE_FAILURES_CONDITION_TIMEOUT_S)

# Functions an expression may call, and methods it may call on strings, dicts and lists: each
# costs at most a pass over data the agent already holds (no str.ljust(10**9), no str.join).
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "any": any, "all": all, "min": min, "max": max, "sum": sum, "abs": abs, "round": round,
    "int": int, "float": float, "str": str, "bool": bool, "matches": fnmatch.fnmatchcase,
}
_ALLOWED_ATTRS: dict[type, set[str]] = {
    str: {"startswith", "endswith", "lower", "upper", "strip", "split", "count", "find"},
    dict: {"get", "keys", "values", "items"},
    list: {"count", "index"},
    tuple: {"count", "index"},
}
_METHOD_NAMES = frozenset().union(*_ALLOWED_ATTRS.values())
_CONSTANTS = {"True": True, "False": False, "None": None}
_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword,
          ast.Subscript, ast.Attribute, ast.Slice, ast.Name, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set,
          ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.comprehension, ast.JoinedStr, ast.FormattedValue,
          ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)
_NAMED_CHECK = re.compile(r"[A-Za-z_][\w.:-]*\Z")
_NOT_EVALUATED = frozenset({"", "llm_judge"})  # no check declared, or Hive's judge decides


class ConditionError(ValueError):
    """A condition that cannot be checked: a refused expression, an unknown name, a bad file."""


def _bounded_pow(base: Any, exponent: Any) -> Any:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and exponent * abs(base).bit_length() > MAX_POWER_BITS):
        raise simpleeval.NumberTooHigh(f"{base} ** {exponent} is larger than {MAX_POWER_BITS} bits")
    return base**exponent


_OPERATORS = {**simpleeval.DEFAULT_OPERATORS, ast.Pow: _bounded_pow}


class Step(NamedTuple):
    """What one step produced: the names a check reads.

    A NamedTuple: read-only like a frozen dataclass, which costs twice as much to build (its
    ``__init__`` sets each field through ``object.__setattr__``), and one is built per step checked.
    """

    output: Any = None
    memory: Any = None
    input: Any = None
    tokens: int | None = None
    tool_calls: Sequence[str] = ()
    duration_s: float | None = None

    def names(self) -> dict[str, Any]:
        return {"output": {} if self.output is None else self.output,
                "memory": {} if self.memory is None else self.memory,
                "input": {} if self.input is None else self.input, "tokens": self.tokens,
                "tool_calls": list(self.tool_calls), "duration_s": self.duration_s}


@dataclass(frozen=True)
class Condition:
    """One thing a step must satisfy: a Goal constraint, a success criterion, or the user's own.

    ``check`` is an expression, a registered name, or a callable taking a ``Step``. A criterion
    (``criterion=True``) that is not met means the goal was not met; a constraint is ``hard``
    (its violation fails the run) or soft (recorded, the run stays a success).
    """

    id: str
    check: str | Callable[[Step], Any]
    hard: bool = True
    criterion: bool = False
    category: str = "general"
    description: str = ""
    agents: frozenset[str] | None = None  # user conditions: only these agent ids (None: all)


@dataclass(frozen=True, slots=True)
class Violation:
    """A condition the step did not satisfy, with the values its expression read."""

    condition: Condition
    observed: dict[str, Any] = field(default_factory=dict)

    @property
    def check_text(self) -> str:
        check = self.condition.check
        return check if isinstance(check, str) else getattr(check, "__qualname__", repr(check))


@dataclass(frozen=True)
class ConditionStats:
    """How many checks ran, failed, and could not be evaluated (never counted as violations)."""

    evaluated: int
    violated: int
    errors: int


# --- expressions -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Expression:
    text: str
    body: ast.AST
    references: tuple[tuple[str, ast.AST], ...]  # the data an expression reads, shown when it is false


def compile_expression(text: str) -> _Expression:
    """Parse and vet ``text`` before it ever runs.

    Refused: anything but a single expression; names other than NAMES, the whitelisted
    functions and comprehension variables; attributes that start with ``_`` or are not a
    whitelisted method; lambdas, walrus, starred and await. What passes still runs under
    simpleeval's own guards, with its length limits (strings, comprehensions) and a power
    bounded to MAX_POWER_BITS.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("an expression must be a non-empty string")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ConditionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ConditionError(f"not a Python expression: {exc}") from None
    bound = {t.id for node in ast.walk(tree) if isinstance(node, ast.comprehension)
             for t in ast.walk(node.target) if isinstance(t, ast.Name)}
    allowed_names = {*NAMES, *_FUNCTIONS, *_CONSTANTS, *bound}
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ConditionError(f"{type(node).__name__} is not allowed in a condition")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr not in _METHOD_NAMES):
            raise ConditionError(f"attribute .{node.attr} is not allowed (index with [...] instead)")
        if isinstance(node, ast.Name) and node.id not in allowed_names:
            raise ConditionError(f"unknown name {node.id!r} (names: {', '.join(NAMES)}; "
                                 f"functions: {', '.join(_FUNCTIONS)})")
        if isinstance(node, ast.Call) and not (
                (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS)
                or (isinstance(node.func, ast.Attribute) and node.func.attr in _METHOD_NAMES)):
            raise ConditionError(f"call to {ast.unparse(node.func)} is not allowed")
    for node in ast.walk(tree.body):  # constant parts run now: 9**9**9 is refused before any step
        if isinstance(node, ast.BinOp) and not any(isinstance(n, ast.Name) for n in ast.walk(node)):
            try:
                _run_expression(_Expression(text, node, ()), {})
            except simpleeval.InvalidExpression as exc:
                raise ConditionError(f"{ast.unparse(node)}: {exc}") from None
            except Exception:  # noqa: BLE001 - 1/0 and the like fail when the check runs, as reported then
                pass
    return _Expression(text, tree.body, tuple((ast.unparse(n), n) for n in _references(tree.body, bound)))


def _references(node: ast.AST, bound: set[str]) -> list[ast.AST]:
    """The outermost data reads rooted at a step name: ``output['x']``, ``memory.get('k')``, ``tokens``."""
    target = node.func if isinstance(node, ast.Call) else node
    root = target.value if isinstance(target, ast.Attribute) else target  # a method: what it is called on
    while isinstance(root, ast.Subscript):
        root = root.value
    rooted = isinstance(root, ast.Name) and root.id in NAMES and root.id not in bound
    if rooted and (not isinstance(node, ast.Call) or isinstance(node.func, ast.Attribute)):
        if not isinstance(node, ast.Attribute):  # a bare method is not a value to show
            return [node]
    found: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        found += [r for r in _references(child, bound) if all(ast.dump(r) != ast.dump(f) for f in found)]
    return found


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    """simpleeval without its scan of each value an expression reads for modules and forbidden functions.

    That scan walks the whole of ``memory`` or ``output`` on every read, so a check's cost grew
    with the agent's data. What it guards against cannot happen here: compile_expression lets an
    expression call only the whitelisted functions and methods, and ``allowed_attrs`` allows
    attributes only on str, dict, list and tuple, so a module or function held in the data can
    be read but neither called nor looked into.
    """

    def _check_disallowed_items(self, item: Any) -> None:
        return None


class _Evaluators(threading.local):
    """One simpleeval evaluator per thread: it keeps per-call state (names, comprehension scope)."""

    def __init__(self) -> None:
        self.evaluator = _Evaluator(
            operators=_OPERATORS, functions=dict(_FUNCTIONS), names={}, allowed_attrs=_ALLOWED_ATTRS)
        self.evaluator.ATTR_INDEX_FALLBACK = False


_evaluators = _Evaluators()


def _run_expression(expression: _Expression, names: dict[str, Any], node: ast.AST | None = None) -> Any:
    evaluator = _evaluators.evaluator
    evaluator.names = names
    return evaluator.eval(expression.text, previously_parsed=node or expression.body)


# --- named checks --------------------------------------------------------------------------------
_registry: dict[str, Callable[[Step], Any] | _Expression] = {}
_user_conditions: dict[str, Condition] = {}
_entry_points: dict[str, importlib.metadata.EntryPoint] = {}
_scanned_for: set[str] = set()  # names looked up in the entry-point group (scanned once each)
_lock = threading.Lock()


def register_condition(name: str, check: str | Callable[[Step], Any], *, severity: str | None = None,
                       category: str = "general", description: str = "",
                       agents: Iterable[str] | None = None) -> None:
    """Name a check, so a Goal's ``check`` or a ``custom`` criterion can refer to it.

    ``check`` is an expression or a callable taking a ``Step`` and returning a truth value.
    With a ``severity`` (``"hard"`` or ``"soft"``) it is also a user condition, checked on
    every step of every agent (or of ``agents``) like a Goal constraint. A refused expression
    raises ConditionError here, not in the agent.
    """
    if not isinstance(name, str) or not _NAMED_CHECK.match(name):
        raise ConditionError(f"a condition name is an identifier (dots, dashes and colons allowed), not {name!r}")
    compiled = compile_expression(check) if isinstance(check, str) else check
    if not callable(compiled) and not isinstance(compiled, _Expression):
        raise ConditionError("a check is an expression string or a callable taking a Step")
    if severity not in (None, "hard", "soft"):
        raise ConditionError(f"severity is 'hard' or 'soft', not {severity!r}")
    with _lock:
        _registry[name] = compiled
        if severity is None:
            _user_conditions.pop(name, None)
        else:
            _user_conditions[name] = Condition(
                id=name, check=check, hard=severity == "hard", category=category, description=description,
                agents=frozenset(agents) if agents is not None else None)


def unregister_condition(name: str) -> None:
    """Forget a named check (and the user condition of that name)."""
    with _lock:
        _registry.pop(name, None)
        _user_conditions.pop(name, None)


def _named(name: str) -> Callable[[Step], Any] | _Expression:
    found = _registry.get(name)
    if found is not None:
        return found
    entry = _entry_points.get(name)
    if entry is None and name not in _scanned_for:
        _scanned_for.add(name)
        _entry_points.update({ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
        entry = _entry_points.get(name)
    if entry is None:
        raise ConditionError(f"no check named {name!r} (register_condition, or the {ENTRY_POINT_GROUP!r} "
                             "entry-point group)")
    loaded = entry.load()
    check = compile_expression(loaded) if isinstance(loaded, str) else loaded
    if not callable(check) and not isinstance(check, _Expression):
        raise ConditionError(f"entry point {entry.value!r} is neither a callable nor an expression")
    with _lock:
        _registry.setdefault(name, check)
    return check


# --- user conditions from a file ------------------------------------------------------------------
_FILE_KEYS = {"id", "check", "severity", "category", "description", "agents"}


def load_file(path: str | os.PathLike[str]) -> list[Condition]:
    """Register the conditions of a TOML or YAML file; ConditionError says what is wrong.

    Both hold a list ``conditions`` of tables with ``id``, ``check`` (an expression or a named
    check), and optionally ``severity`` (``hard``, the default, or ``soft``), ``category``,
    ``description`` and ``agents`` (agent ids it applies to; all when absent).
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConditionError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConditionError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, "
                                 "or write the conditions in TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConditionError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConditionError(f"{path} is not valid TOML: {exc}") from None
    entries = data.get("conditions") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConditionError(f"{path}: expected a list named 'conditions' ([[conditions]] in TOML)")
    loaded = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not {"id", "check"} <= entry.keys() or entry.keys() - _FILE_KEYS:
            raise ConditionError(f"{path}: condition {n} needs 'id' and 'check', and may have only "
                                 f"{', '.join(sorted(_FILE_KEYS))}")
        try:
            register_condition(str(entry["id"]), str(entry["check"]), severity=entry.get("severity", "hard"),
                               category=str(entry.get("category", "general")),
                               description=str(entry.get("description", "")), agents=entry.get("agents"))
        except ConditionError as exc:
            raise ConditionError(f"{path}: condition {entry['id']!r}: {exc}") from None
        loaded.append(_user_conditions[str(entry["id"])])
    return loaded


def load_from_env() -> list[Condition]:
    """The conditions of the file HIVE_FAILURES_CONDITIONS names, if any; a bad file is logged and counted."""
    location = os.environ.get(semconv.ENV_CONDITIONS, "").strip()
    if not location:
        return []
    try:
        return load_file(location)
    except ConditionError as exc:
        _broken(f"file:{location}", f"{semconv.ENV_CONDITIONS}: {exc}")
        return []


# --- evaluation ------------------------------------------------------------------------------------
_evaluated = _violated = _errors = 0
_warned: set[str] = set()


def condition_stats() -> ConditionStats:
    """Counters for this process: checks evaluated, violated, and broken (errors)."""
    return ConditionStats(evaluated=_evaluated, violated=_violated, errors=_errors)


def _broken(key: str, message: str) -> None:
    """Count a condition that could not be checked; log it the first time."""
    global _errors
    with _lock:
        _errors += 1
        first = key not in _warned
        _warned.add(key)
    if first:
        _log.warning("hive-failures: %s (counted in condition_stats().errors; the agent is not affected)", message)


def _timeout() -> float:
    try:
        return float(os.environ.get(semconv.ENV_CONDITION_TIMEOUT, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class ConditionSet:
    """The conditions that apply to one run of one agent, ready to check each of its steps.

    Built once per run, so a Goal changed by evolution is read afresh; cheap, as each distinct
    declaration is turned into a condition (and an expression compiled) once per process.
    Falsy when there is nothing to check.
    """

    __slots__ = ("constraints", "criteria")

    def __init__(self, goal: Any = None, agent_id: str | None = None) -> None:
        self.constraints: list[tuple[Condition, Any]] = []
        self.criteria: list[tuple[Condition, Any]] = []
        for constraint in getattr(goal, "constraints", None) or ():
            found = _built(("constraint", getattr(constraint, "id", ""), getattr(constraint, "check", ""),
                            getattr(constraint, "constraint_type", "hard"), getattr(constraint, "category", "general"),
                            getattr(constraint, "description", "")), _constraint)
            if found is not None:
                self.constraints.append(found)
        for criterion in getattr(goal, "success_criteria", None) or ():
            metric = getattr(criterion, "metric", "")
            # Only a custom criterion has a check (Hive's SuccessCriterion has none: asking costs an exception)
            check = getattr(criterion, "check", None) if str(metric or "") == "custom" else None
            found = _built(("criterion", getattr(criterion, "id", ""), metric, getattr(criterion, "target", None),
                            check, getattr(criterion, "description", "")), _criterion)
            if found is not None:
                self.criteria.append(found)
        if _user_conditions:
            for condition in _user_conditions.values():
                if condition.agents is None or agent_id in condition.agents:
                    self.constraints.append((condition, condition.id))  # run as its registered check

    def __bool__(self) -> bool:
        return bool(self.constraints or self.criteria)

    def check_constraints(self, step: Step, skip: Iterable[str] = ()) -> list[Violation]:
        """The constraints ``step`` violates, but those in ``skip`` (already recorded in this run)."""
        return _check(self.constraints, step, skip)

    def check_criteria(self, step: Step) -> list[Violation]:
        """The success criteria ``step``'s output does not meet."""
        return _check(self.criteria, step, ())


_Checked = tuple[Condition, Any]  # a condition and what runs it
_BUILT: dict[tuple[Any, ...], _Checked | None] = {}


def _built(fields: tuple[Any, ...], build: Callable[..., _Checked | None]) -> _Checked | None:
    """A Goal's condition as ``build(*fields[1:])`` makes it, made once per distinct declaration.

    Every run reads its Goal afresh (evolution may change it), but runs of one agent declare
    the same conditions again and again: the fields read are the key.
    """
    key = (*fields, *map(type, fields))  # a target of 1 is not one of True, nor an enum member its value
    try:
        return _BUILT[key]
    except KeyError:
        pass
    except Exception:  # noqa: BLE001 - an unhashable target (a list, a dict), or a broken one: built each time
        return build(*fields[1:])
    found = build(*fields[1:])
    if len(_BUILT) >= 1024:
        _BUILT.clear()  # atomic, unlike evicting one entry while another thread adds one
    _BUILT[key] = found
    return found


def _constraint(id_: Any, check: Any, constraint_type: Any, category: Any, description: Any) -> _Checked | None:
    check = str(check or "").strip()
    if check in _NOT_EVALUATED:
        return None
    condition = Condition(id=str(id_), check=check, hard=str(constraint_type).lower() != "soft",
                          category=str(category or "general"), description=str(description or ""))
    return condition, _prepared(condition)


class _Metric:
    """A success metric this module knows (``output_contains``, ``output_equals``): bounded code of
    ours, run without the timing a user's named check gets."""

    __slots__ = ("holds", "target")

    def __init__(self, holds: Callable[[Any, Any], bool], target: Any) -> None:
        self.holds, self.target = holds, target


def _criterion(id_: Any, metric: Any, target: Any, check: Any, description: Any) -> _Checked | None:
    metric = str(metric or "")
    if metric == "output_contains":
        test: Any = _Metric(_output_contains, target)
        check = f"output contains {target!r}"
    elif metric == "output_equals":
        test = _Metric(_output_equals, target)
        check = f"output equals {target!r}"
    elif metric == "custom":
        check = str(check or target or "").strip()
        if check in _NOT_EVALUATED:
            return None
        test = None
    else:  # llm_judge (Hive's judge decides) and metrics this package does not know
        return None
    condition = Condition(id=str(id_), check=check, criterion=True, description=str(description or ""))
    return condition, test or _prepared(condition)


def conditions_for(goal: Any, agent_id: str | None) -> ConditionSet | None:
    """The conditions of one run of ``agent_id`` towards ``goal``; None when there is nothing to
    check (most agent loops have no Goal), so that a run asks nothing more of them."""
    if goal is None and not _user_conditions:
        return None
    conditions = ConditionSet(goal, agent_id)
    return conditions if conditions else None


def _prepared(condition: Condition) -> Any:
    """What to run for a check: a compiled expression, a named check (resolved when first run), or the
    ConditionError saying why it cannot run (reported when first run, so a broken Goal never raises)."""
    check = condition.check
    if callable(check):
        return check
    if _NAMED_CHECK.match(check) and check not in NAMES:
        return check  # a name: resolved on first use
    try:
        return _compiled(check)
    except ConditionError as exc:
        return exc


_COMPILED: dict[str, _Expression] = {}


def _compiled(text: str) -> _Expression:
    found = _COMPILED.get(text)
    if found is None:
        found = compile_expression(text)
        if len(_COMPILED) >= 1024:
            _COMPILED.clear()  # atomic, where popping the oldest could race another thread's
        _COMPILED[text] = found
    return found


def _check(conditions: list[tuple[Condition, Any]], step: Step, skip: Iterable[str]) -> list[Violation]:
    global _evaluated, _violated
    if not conditions:
        return []
    skip = set(skip)
    names: dict[str, Any] | None = None
    violations: list[Violation] = []
    evaluated = 0
    for condition, test in conditions:
        if condition.id in skip:
            continue
        try:
            if type(test) is _Metric:
                held = test.holds(step.output, test.target)
                evaluated += 1
                if not held:
                    violations.append(Violation(condition, {}))
                continue
            if isinstance(test, str):  # a named check: from now on, what it names
                test = _named(test)
            if isinstance(test, ConditionError):  # kept with its declaration (and shared): never raised,
                _broken(f"error:{condition.id}", f"condition {condition.id!r} could not be checked: "
                                                 f"{type(test).__name__}: {test}")  # so no frame stays on it
                continue
            if isinstance(test, _Expression):
                if names is None:
                    names = step.names()
                held = _run_expression(test, names)
            else:
                started = time.monotonic()
                held = test(step)
                if time.monotonic() - started > _timeout():
                    _broken(f"slow:{condition.id}", f"condition {condition.id!r} took longer than {_timeout()} s "
                                                    f"({semconv.ENV_CONDITION_TIMEOUT}); its verdict is ignored")
                    continue
        except (LookupError, simpleeval.AttributeDoesNotExist):
            continue  # the step has no such field: the condition does not apply to it
        except Exception as exc:  # noqa: BLE001 - a broken condition must never fail the agent
            _broken(f"error:{condition.id}", f"condition {condition.id!r} could not be checked: "
                                             f"{type(exc).__name__}: {exc}")
            continue
        evaluated += 1
        if not held:
            observed = _observed(test, names or step.names()) if isinstance(test, _Expression) else {}
            violations.append(Violation(condition, observed))
    with _lock:
        _evaluated += evaluated
        _violated += len(violations)
    return violations


def _observed(expression: _Expression, names: dict[str, Any]) -> dict[str, Any]:
    """The values a false expression read, e.g. ``{"output['total']": -5}``."""
    observed = {}
    for text, node in expression.references:
        try:
            observed[text] = _run_expression(expression, names, node)
        except Exception:  # noqa: BLE001 - a reference that fails to read is left out
            continue
    return observed


def _output_contains(output: Any, target: Any) -> bool:
    """A string target is a key of the output or in one of its text values; another target is one of its values."""
    if isinstance(output, Mapping):
        if isinstance(target, str) and target in output:
            return True
        values = list(output.values())
    else:
        values = [output]
    if isinstance(target, str):
        return any(isinstance(v, str) and target in v for v in values)
    return any(v == target or (isinstance(v, (list, tuple, set)) and target in v) for v in values)


def _output_equals(output: Any, target: Any) -> bool:
    """A mapping target equals the whole output; another target, the output's only value."""
    if isinstance(target, Mapping) or not isinstance(output, Mapping):
        return output == target
    return len(output) == 1 and next(iter(output.values())) == target
