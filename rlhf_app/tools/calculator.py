"""`calculator`: safe arithmetic for a policy's tool calls (GSM8K steps such as "48*5").

The expression is parsed with `ast` and only numbers, + - * / // % **, parentheses and unary signs are
evaluated: a name, a call, an attribute or any other syntax is refused, and so are an exponent or a
result too large to compute quickly. Every refusal is a ValueError whose message says why: a tool loop
returns it to the model (as TRL does with a raising tool).
"""

from __future__ import annotations

import ast
import math
import operator

MAX_LENGTH = 200  # characters of one expression
MAX_EXPONENT = 100  # |b| in a ** b
MAX_MAGNITUDE = 1e100  # |value| of any intermediate result
SIGNIFICANT = 10  # digits of a non-integral result

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SYNTAX = {"Call": "a function call", "Attribute": "an attribute", "Subscript": "indexing", "Compare": "a comparison",
           "BoolOp": "and / or", "Lambda": "a lambda"}


def _bounded(value):
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ValueError(f"the result is too large (above {MAX_MAGNITUDE:g})")
    return value


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise ValueError(f"the exponent {right:g} is too large (at most {MAX_EXPONENT})")
            if left == 0 and right < 0:
                raise ValueError("0 cannot be raised to a negative power")
            if left != 0 and abs(right) * math.log10(abs(left)) > math.log10(MAX_MAGNITUDE):
                raise ValueError(f"the result is too large (above {MAX_MAGNITUDE:g})")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        if isinstance(value, complex):
            raise ValueError("a negative number cannot be raised to a fractional power")
        return _bounded(value)
    what = _SYNTAX.get(type(node).__name__, f"this syntax ({type(node).__name__})")
    if isinstance(node, ast.Name):
        what = f"the name {node.id!r}"
    elif isinstance(node, ast.Constant):
        what = f"the value {node.value!r}"
    raise ValueError(f"{what} is not allowed: use numbers, + - * / // % ** and parentheses")


def format_number(value) -> str:
    """An integral value without a decimal point ("240", not "240.0"); others to 10 significant digits."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{SIGNIFICANT}g}"


def calculator(expression: str) -> str:
    """Evaluates arithmetic.

    Args:
        expression: Numbers with + - * / ** and parentheses, e.g. "48*5".

    Returns:
        The value, e.g. "240".
    """
    if not isinstance(expression, str):
        raise ValueError(f"expression must be text such as \"48*5\", not {type(expression).__name__}")
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"the expression is too long ({len(expression)} characters, at most {MAX_LENGTH})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expression!r} as arithmetic: use numbers, + - * / // % ** and "
                         "parentheses, e.g. \"48*5\"") from None
    return format_number(_evaluate(tree))
