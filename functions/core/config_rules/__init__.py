"""The configuration-parameter catalog of each datastore, and validation of configuration values.

Trove keeps a hand-written `validation-rules.json` per datastore. Ours are generated from each
server's own description of its settings (`pg_settings`, MariaDB's
`INFORMATION_SCHEMA.SYSTEM_VARIABLES`) by `infra/dev/config_rules.py`, minus a deny list of
settings that would take the server out of the platform's control; the JSON files next to this
module are its committed output.

Entries: `name`, `type` (integer | float | boolean | string), `restart_required`, and where the
server says so `min`/`max`, `unit` (PostgreSQL: "kB", "8kB", "ms"...), `enum_values`,
`new_sessions_only` (a change applies to sessions started after it), `context` (PostgreSQL) or
`scope` (MariaDB), `description`.

`validate()` checks values as the server would and returns them normalised: integers in the
setting's own unit (PostgreSQL "128MB" for shared_buffers -> 16384 blocks of 8kB, MariaDB "128M"
-> 134217728), booleans as bool, enum values spelled as the server lists them. It is stricter
than Trove in one way (values are range-checked against the server's own bounds, always) and
looser in another (strings with units are accepted where the server accepts them).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

from functions.core.errors import BadRequest, UnprocessableEntity

DATASTORES = ("postgresql", "mariadb")
TYPES = ("integer", "float", "boolean", "string")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    restart_required: bool
    min: int | float | None = None
    max: int | float | None = None
    unit: str | None = None
    enum_values: tuple[str, ...] | None = None
    new_sessions_only: bool = False
    context: str | None = None  # PostgreSQL pg_settings.context
    scope: str | None = None  # MariaDB VARIABLE_SCOPE
    description: str = ""

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Parameter:
        enum_values = entry.get("enum_values")
        return cls(
            name=entry["name"],
            type=entry["type"],
            restart_required=bool(entry["restart_required"]),
            min=entry.get("min"),
            max=entry.get("max"),
            unit=entry.get("unit"),
            enum_values=tuple(enum_values) if enum_values is not None else None,
            new_sessions_only=bool(entry.get("new_sessions_only", False)),
            context=entry.get("context"),
            scope=entry.get("scope"),
            description=entry.get("description", ""),
        )

    def to_api(self, datastore_version_id: str) -> dict[str, Any]:
        """Trove's `configuration-parameters` item. Trove drops a falsy min/max (so `min: 0`
        vanished); here they are left out only when the server gives no bound."""
        view: dict[str, Any] = {
            "name": self.name,
            "datastore_version_id": datastore_version_id,
            "restart_required": self.restart_required,
            "type": self.type,
        }
        if self.min is not None:
            view["min"] = self.min
        if self.max is not None:
            view["max"] = self.max
        return view


@dataclass(frozen=True)
class Catalog:
    datastore: str
    version: str
    source: str
    generated_by: str
    parameters: dict[str, Parameter] = field(repr=False)  # canonical name -> Parameter
    _folded: dict[str, Parameter] = field(repr=False, compare=False)  # folded name -> Parameter

    def find(self, name: str) -> Parameter | None:
        return self._folded.get(fold(self.datastore, name))


def fold(datastore: str, name: str) -> str:
    """Names are case-insensitive on both servers; MariaDB also takes '-' for '_' (option files)."""
    name = name.lower()
    return name.replace("-", "_") if datastore == "mariadb" else name


@cache
def load(datastore: str) -> Catalog:
    if datastore not in DATASTORES:
        raise UnprocessableEntity(f"Configuration groups are not supported for this datastore: {datastore}.")
    text = resources.files(__name__).joinpath(f"{datastore}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    params = [Parameter.from_json(entry) for entry in data["parameters"]]
    return Catalog(
        datastore=data["datastore"],
        version=data["version"],
        source=data.get("source", ""),
        generated_by=data.get("generated_by", ""),
        parameters={p.name: p for p in params},
        _folded={fold(datastore, p.name): p for p in params},
    )


def catalog(datastore: str) -> list[Parameter]:
    """Every parameter a configuration group may set on this datastore, sorted by name."""
    return list(load(datastore).parameters.values())


def get(datastore: str, name: str) -> Parameter:
    param = load(datastore).find(name) if isinstance(name, str) else None
    if param is None:
        raise BadRequest(f"The configuration parameter '{name}' is not supported for this datastore.")
    return param


def restart_required(datastore: str, name: str) -> bool:
    return get(datastore, name).restart_required


def needs_restart(datastore: str, names: Any) -> bool:
    """Whether applying these parameters needs a restart (Trove's RESTART_REQUIRED task)."""
    return any(restart_required(datastore, name) for name in names)


def validate(datastore: str, values: Any) -> dict[str, Any]:
    """Check configuration values; return them keyed by canonical name, normalised.

    Raises BadRequest naming the parameter for an unknown parameter, a value of the wrong
    type (or with a unit the setting does not take), a value out of range, or an enum value
    the server does not list."""
    cat = load(datastore)
    if not isinstance(values, dict):
        raise BadRequest("The configuration values must be an object of parameter names and values.")
    result: dict[str, Any] = {}
    for key, value in values.items():
        param = get(datastore, key)
        if param.name in result:
            raise BadRequest(f"The configuration parameter '{param.name}' is given more than once.")
        result[param.name] = _normalise(cat.datastore, param, value)
    return result


# ---------------------------------------------------------------- values


def _type_error(param: Parameter, hint: str = "") -> BadRequest:
    message = f"The value of '{param.name}' must be of type {param.type}."
    return BadRequest(f"{message} {hint}" if hint else message)


def _fmt(bound: float) -> str:
    if isinstance(bound, float) and bound.is_integer() and abs(bound) < 1e15:
        return str(int(bound))
    return str(bound)


def _check_range(param: Parameter, value: float) -> None:
    low = param.min if param.min is not None else -math.inf
    high = param.max if param.max is not None else math.inf
    if not (low <= value <= high):
        raise BadRequest(
            f"The value provided for the configuration parameter {param.name} is not within the "
            f"allowed range of {_fmt(param.min) if param.min is not None else ''}.."
            f"{_fmt(param.max) if param.max is not None else ''}."
        )


def _check_string(param: Parameter, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(param)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise BadRequest(f"The value of '{param.name}' must not contain control characters.")
    return value


def _normalise(datastore: str, param: Parameter, value: Any) -> Any:
    if param.type == "string":
        text = _check_string(param, value)
        if param.enum_values is not None:
            # Both servers match enum values case-insensitively.
            for allowed in param.enum_values:
                if allowed.lower() == text.lower():
                    return allowed
            raise BadRequest(
                f"The value '{text}' is not allowed for the configuration parameter '{param.name}'. "
                f"Allowed values: {', '.join(param.enum_values)}."
            )
        return text
    if param.type == "boolean":
        parsed = (_pg_bool if datastore == "postgresql" else _mariadb_bool)(value)
        if parsed is None:
            raise _type_error(param)
        return parsed
    if param.type == "integer":
        number: int | float = (_pg_integer if datastore == "postgresql" else _mariadb_integer)(param, value)
    elif param.type == "float":
        number = (_pg_real if datastore == "postgresql" else _mariadb_float)(param, value)
    else:  # pragma: no cover - the generator emits only the four types
        raise BadRequest(f"The configuration parameter '{param.name}' has an unknown type.")
    _check_range(param, number)
    return number


# ---- booleans


def _pg_bool(value: Any) -> bool | None:
    """JSON true/false, or what PostgreSQL's parse_bool takes: true/false/yes/no/on/off/1/0,
    case-insensitive, and unique prefixes of them ('t', 'of'...)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value:
        return None
    text = value.lower()
    if text in ("1", "0"):
        return text == "1"
    if text[0] == "o":  # 'o' alone is ambiguous
        if len(text) >= 2 and "on".startswith(text):
            return True
        if len(text) >= 2 and "off".startswith(text):
            return False
        return None
    for word, result in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if word.startswith(text):
            return result
    return None


def _mariadb_bool(value: Any) -> bool | None:
    """JSON true/false, 1/0, or ON/OFF/TRUE/FALSE/1/0 in any case (what the server's option
    parser takes)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        text = value.lower()
        if text in ("on", "true", "1"):
            return True
        if text in ("off", "false", "0"):
            return False
    return None


# ---- PostgreSQL numbers (guc.c: parse_int, parse_real, convert_to_base_unit)

# Conversion tables, largest unit first, multipliers in bytes / microseconds (exact).
_PG_MEMORY_UNITS = (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10), ("B", 1))
_PG_TIME_UNITS = (("d", 86_400_000_000), ("h", 3_600_000_000), ("min", 60_000_000), ("s", 1_000_000),
                  ("ms", 1_000), ("us", 1))
_PG_MEMORY_HINT = 'Valid units for this parameter are "B", "kB", "MB", "GB", and "TB".'
_PG_TIME_HINT = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'
_PG_MAX_UNIT_LEN = 3

# strtol(value, &end, 0): leading space, sign, then hex, octal or decimal.
_C_LONG = re.compile(r"[ \t\n\r\f\v]*[+-]?(?:0[xX][0-9a-fA-F]+|[1-9][0-9]*|0[0-7]*)")
# strtod (decimal forms, inf/nan).
_C_DOUBLE = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE
)


def _pg_unit_table(unit: str) -> tuple[tuple[tuple[str, int], ...], int, str] | None:
    """(conversion table, size of the setting's own unit in the table's terms, hint)."""
    memory = re.fullmatch(r"([0-9]*)(B|kB|MB)", unit)
    if memory:
        factor = int(memory.group(1) or 1)
        return _PG_MEMORY_UNITS, factor * dict(_PG_MEMORY_UNITS)[memory.group(2)], _PG_MEMORY_HINT
    time_units = dict(_PG_TIME_UNITS)
    if unit in time_units:
        return _PG_TIME_UNITS, time_units[unit], _PG_TIME_HINT
    return None


def _pg_convert_unit(param: Parameter, value: float, rest: str) -> float:
    """convert_to_base_unit: `rest` is what follows the number (spaces already skipped)."""
    table = _pg_unit_table(param.unit) if param.unit else None
    if table is None:
        raise _type_error(param, "This parameter takes no unit.")
    units, base, hint = table
    unit = ""
    i = 0
    while i < len(rest) and not rest[i].isspace() and len(unit) < _PG_MAX_UNIT_LEN:
        unit += rest[i]
        i += 1
    if rest[i:].strip(" \t\n\r\f\v") != "":
        raise _type_error(param, hint)  # unit too long, or garbage after it
    for index, (name, size) in enumerate(units):
        if name == unit:
            converted = value * float(Fraction(size, base))
            if index + 1 < len(units):
                # A fractional value ("30.1GB") is rounded to a multiple of the next smaller unit.
                step = float(Fraction(units[index + 1][1], base))
                if math.isfinite(converted):
                    converted = round(converted / step) * step
            return converted
    raise _type_error(param, hint)


def _c_long(digits: str) -> int:
    sign = -1 if digits.startswith("-") else 1
    body = digits.lstrip("+-")
    if body[:2] in ("0x", "0X"):
        return sign * int(body, 0)
    if body.startswith("0") and len(body) > 1:
        return sign * int(body, 8)
    return sign * int(body)


def _pg_parse(param: Parameter, text: str, integer: bool) -> float:
    """parse_int / parse_real up to the range check: the number, then an optional unit."""
    if integer:
        # strtol(value, &end, 0); if it stops at '.', 'e' or 'E', parse again as a double.
        match = _C_LONG.match(text)
        end = match.end() if match else 0
        reparse = text[end:end + 1] in (".", "e", "E") and end < len(text)
        if match is None and not reparse:
            raise _type_error(param)
    if not integer or reparse:
        match = _C_DOUBLE.match(text)
        if match is None:
            raise _type_error(param)
        number, end = float(match.group(0)), match.end()
    else:
        assert match is not None
        number = float(_c_long(match.group(0).strip()))
    if math.isnan(number):
        raise _type_error(param)
    rest = text[end:].lstrip(" \t\n\r\f\v")
    if rest:
        number = _pg_convert_unit(param, number, rest)
    return number


def _pg_integer(param: Parameter, value: Any) -> int:
    if isinstance(value, bool):
        raise _type_error(param)
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise _type_error(param)  # a JSON float is not an integer
    number = _pg_parse(param, value, integer=True)
    if not math.isfinite(number):
        _check_range(param, number)
    return round(number)  # rint(): half to even, as Python's round


def _pg_real(param: Parameter, value: Any) -> float:
    if isinstance(value, bool):
        raise _type_error(param)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = _pg_parse(param, value, integer=False)
    else:
        raise _type_error(param)
    if math.isnan(number):
        raise _type_error(param)
    return number


# ---- MariaDB numbers (my_getopt.c: eval_num_suffix)

_MARIADB_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
_MARIADB_INT = re.compile(r"([+-]?[0-9]+)([kmgtpe]?)", re.IGNORECASE)
_MARIADB_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _mariadb_integer(param: Parameter, value: Any) -> int:
    if isinstance(value, bool):
        raise _type_error(param)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _MARIADB_INT.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _MARIADB_SUFFIXES[match.group(2).lower()]
    raise _type_error(param)


def _mariadb_float(param: Parameter, value: Any) -> float:
    if isinstance(value, bool):
        raise _type_error(param)
    numeric = isinstance(value, (int, float))
    if not (numeric or isinstance(value, str) and _MARIADB_FLOAT.fullmatch(value.strip())):
        raise _type_error(param)
    number = float(value)
    if not math.isfinite(number):
        raise _type_error(param)
    return number


__all__ = [
    "DATASTORES",
    "Catalog",
    "Parameter",
    "catalog",
    "fold",
    "get",
    "load",
    "needs_restart",
    "restart_required",
    "validate",
]
