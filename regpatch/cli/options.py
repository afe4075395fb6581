"""Command-line options made from the table of options (``regpatch.options``).

``add_options(parser, GROUP)`` adds one flag per option of the group: its flag, its
help (the option's description, or its shorter command-line help), a metavar,
repeatable for lists. Building the parser needs no pydantic, so a bad argument is
answered at once. Values stay strings until ``model_of(Model, GROUP, args)`` hands them
to the parameter model, whose validation is the only one: a bad value is a
``UsageError`` naming the flag, in one line. A flag not given leaves the model's default.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Iterable, Optional, TypeVar

from regpatch.errors import UsageError
from regpatch.options import CHANGE, Option

if TYPE_CHECKING:  # pydantic: imported once the flags are parsed
    from pydantic import BaseModel

    M = TypeVar("M", bound=BaseModel)


def _options(group: dict[str, Option], only: Optional[Iterable[str]], exclude: Iterable[str]):
    keep = set(only) if only is not None else None
    skip = set(exclude)
    return [o for name, o in group.items() if (keep is None or name in keep) and name not in skip]


def add_options(parser: Any, group: dict[str, Option], *, only: Optional[Iterable[str]] = None,
                exclude: Iterable[str] = (), title: Optional[str] = None, required: Iterable[str] = ()) -> None:
    """One flag per option of ``group`` (``only`` these, or all but ``exclude``; ``required``:
    these although the table makes them optional)."""
    target = parser.add_argument_group(title) if title else parser
    for o in _options(group, only, exclude):
        kwargs: dict[str, Any] = {"dest": o.key, "default": argparse.SUPPRESS,
                                  "help": (o.help or o.description).replace("%", "%%")}
        if o.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = o.metavar or o.name.upper()
            if o.kind is list:
                kwargs["action"] = "append"
        if o.required or o.name in required:
            kwargs["required"] = True
        target.add_argument(o.cli_flag, **kwargs)


def model_of(model: type[M], group: dict[str, Option], args: argparse.Namespace, *,
             only: Optional[Iterable[str]] = None, exclude: Iterable[str] = ()) -> M:
    """The model from the flags given."""
    from pydantic import ValidationError  # after the arguments are parsed (start-up)

    options = _options(group, only, exclude)
    values = {o.name: getattr(args, o.key) for o in options if hasattr(args, o.key)}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        flags = {o.name: o.cli_flag for o in options}
        raise UsageError("; ".join(_problem(err, flags) for err in e.errors())) from None


def change_of(args: argparse.Namespace) -> Any:
    """``ChangeParams`` from --requested-by (default: user@host of this process) and --reason."""
    from regpatch.params import ChangeParams  # after the arguments are parsed (start-up)
    from regpatch.storage.state import user_at_host  # the storage package: after the arguments too

    if not hasattr(args, "requested_by"):
        args.requested_by = user_at_host()
    return model_of(ChangeParams, CHANGE, args)


def _problem(err: Any, flags: dict[str, str]) -> str:
    loc = err.get("loc") or ()
    name = str(loc[0]) if loc else ""
    flag = flags.get(name, name)
    msg = str(err.get("msg", "invalid"))
    msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
    if err.get("type") == "missing":
        return f"{flag} is required"
    if not flag:  # a rule of the whole model: its message names the flags
        return msg
    value = err.get("input")
    shown = f" {value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    return f"{flag}{shown}: {msg[:1].lower() + msg[1:]}"
