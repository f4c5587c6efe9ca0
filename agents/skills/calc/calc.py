"""Calculator and units: "what is 12*7?", "/calc 2^10", "convert 5 km to miles", "100 F in C".

Safe by construction: the expression is parsed by Python's `ast` and only
numbers, + - * / // % ** (bounded), parentheses, a few functions and constants
are evaluated by walking the tree; anything else (names, attributes, calls of
anything else, strings) is refused. There is no `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from hero.skills import SkillContext, command, on_message, tool

FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log10, "ln": math.log,
    "exp": math.exp, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
MAX_LENGTH = 200
MAX_MAGNITUDE = 1e300

# unit -> (dimension, factor to the base unit); temperatures are converted apart (they have offsets)
UNITS: dict[str, tuple[str, float]] = {}
for names, dim, factor in [
    (("m", "meter", "metre"), "length", 1.0), (("km", "kilometer", "kilometre"), "length", 1000.0),
    (("cm", "centimeter"), "length", 0.01), (("mm", "millimeter"), "length", 0.001),
    (("mi", "mile"), "length", 1609.344), (("ft", "foot", "feet"), "length", 0.3048),
    (("in", "inch", "inche"), "length", 0.0254), (("yd", "yard"), "length", 0.9144),
    (("g", "gram"), "mass", 1.0), (("kg", "kilogram", "kilo"), "mass", 1000.0), (("mg", "milligram"), "mass", 0.001),
    (("lb", "lbs", "pound"), "mass", 453.59237), (("oz", "ounce"), "mass", 28.349523125),
    (("s", "sec", "second"), "time", 1.0), (("min", "minute"), "time", 60.0), (("h", "hr", "hour"), "time", 3600.0),
    (("day",), "time", 86400.0), (("week",), "time", 604800.0),
    (("l", "liter", "litre"), "volume", 1.0), (("ml", "milliliter"), "volume", 0.001),
    (("gal", "gallon"), "volume", 3.785411784), (("cup",), "volume", 0.2365882365),
    (("j", "joule"), "energy", 1.0), (("kj", "kilojoule"), "energy", 1000.0), (("wh",), "energy", 3600.0),
    (("kwh",), "energy", 3.6e6), (("cal", "calorie"), "energy", 4.184), (("kcal",), "energy", 4184.0),
    (("w", "watt"), "power", 1.0), (("kw", "kilowatt"), "power", 1000.0),
    (("kmh", "km/h", "kph"), "speed", 1 / 3.6), (("mph",), "speed", 0.44704), (("m/s", "mps"), "speed", 1.0),
]:
    for name in names:
        UNITS[name] = (dim, factor)
TEMPERATURES = {"c": "C", "celsius": "C", "f": "F", "fahrenheit": "F", "k": "K", "kelvin": "K"}
CONVERT = re.compile(r"^\s*(?:convert\s+)?(.+?)\s*([a-z/]+)\s+(?:to|in|into)\s+([a-z/]+)\s*\??\s*$", re.IGNORECASE)
QUESTION = re.compile(r"^\s*(?:what is|what's|calculate|compute)\s+(.+?)\s*\??\s*$", re.IGNORECASE)
ARITHMETIC = re.compile(r"^[\d\s.+\-*/%^()x×]*\d\s*[-+*/%^x×]\s*[\d(][\d\s.+\-*/%^()x×]*$")


class CalcError(ValueError):
    """An expression the calculator does not take; the message says why."""


def evaluate_expression(text: str) -> float:
    """The value of an arithmetic expression; `CalcError` for anything else."""
    if len(text) > MAX_LENGTH:
        raise CalcError(f"an expression is at most {MAX_LENGTH} characters")
    source = re.sub(r"(?<=\d)\s*[x×]\s*(?=[\d(])", "*", text.replace("^", "**").replace("÷", "/"))
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        raise CalcError(f"{text!r} is not an arithmetic expression") from None
    value = _walk(tree.body)
    if isinstance(value, complex) or not math.isfinite(value):
        raise CalcError("the result is not a finite real number")
    return value


def _walk(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _walk(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or (abs(left) > 1e6 and abs(right) > 50)):
            raise CalcError("that power is too large")
        try:
            value = BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("the result is too large") from None
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
            raise CalcError("the result is too large or not real")
        return value
    if isinstance(node, ast.Name) and node.id.lower() in CONSTANTS:
        return CONSTANTS[node.id.lower()]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.lower() in FUNCTIONS
            and not node.keywords and len(node.args) == 1):
        try:
            return float(FUNCTIONS[node.func.id.lower()](_walk(node.args[0])))
        except (ValueError, OverflowError):
            raise CalcError(f"{node.func.id} is not defined there") from None
    raise CalcError(f"{ast.unparse(node)!r} is not allowed: only numbers, + - * / % ^, parentheses, "
                    f"{', '.join(sorted(FUNCTIONS))} and {', '.join(CONSTANTS)}")


def _unit(name: str) -> str:
    name = name.lower()
    if name in UNITS or name in TEMPERATURES:
        return name
    if name.endswith("s") and (name[:-1] in UNITS or name[:-1] in TEMPERATURES):
        return name[:-1]
    raise CalcError(f"unknown unit {name!r}")


def convert(amount: float, source: str, target: str) -> float:
    src, dst = _unit(source), _unit(target)
    if src in TEMPERATURES or dst in TEMPERATURES:
        if not (src in TEMPERATURES and dst in TEMPERATURES):
            raise CalcError(f"cannot convert {source} to {target}")
        kelvin = {"C": amount + 273.15, "F": (amount - 32) * 5 / 9 + 273.15, "K": amount}[TEMPERATURES[src]]
        return {"C": kelvin - 273.15, "F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[TEMPERATURES[dst]]
    (dim_a, fa), (dim_b, fb) = UNITS[src], UNITS[dst]
    if dim_a != dim_b:
        raise CalcError(f"cannot convert {source} ({dim_a}) to {target} ({dim_b})")
    return amount * fa / fb


def answer(text: str) -> str:
    """The answer to an expression or a conversion (`5 km to miles`)."""
    match = CONVERT.match(text)
    if match is not None:
        try:
            amount = evaluate_expression(match[1])
            _unit(match[2]), _unit(match[3])
        except CalcError:
            match = None
        else:
            return f"{_fmt(amount)} {match[2]} = {_fmt(convert(amount, match[2], match[3]))} {match[3]}"
    return f"{text.strip()} = {_fmt(evaluate_expression(text))}"


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


@tool
def evaluate(ctx: SkillContext, expression: str) -> str:
    """Compute arithmetic (+ - * / % ^, sqrt, sin, ln, pi …) or convert units ("5 km to miles", "100 F in C").

    Args:
        expression: the expression or conversion
    """
    try:
        return answer(expression)
    except CalcError as exc:
        return f"I cannot compute that: {exc}."


@command("calc", usage="/calc EXPRESSION | /calc 5 km to miles")
def calc_command(ctx: SkillContext, text: str) -> str:
    return evaluate(ctx, text) if text else "Usage: /calc 2*(3+4) or /calc 5 km to miles"


@on_message
def phrase(ctx: SkillContext, text: str) -> str | None:
    """Plain arithmetic ("12*7"), "what is …" questions and conversions ("5 km in miles")."""
    question = QUESTION.match(text)
    body = question[1] if question else text
    if not (question or ARITHMETIC.match(text) or CONVERT.match(text)):
        return None
    try:
        return answer(body)
    except CalcError:
        return None  # not arithmetic after all: the model answers it
