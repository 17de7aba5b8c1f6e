"""Pydantic model coder."""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from ..errors import EncodeError
from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["PydanticCoder"]

M = TypeVar("M", bound=BaseModel)


class PydanticCoder(Coder[M]):
    """Stores instances of a pydantic v2 model; decoding validates them.

    ``format="json"`` (the default) stores the model's JSON dump;
    ``format="msgpack"`` stores its JSON-mode dump (datetimes, UUIDs, enums...
    as JSON types) packed with msgpack, which is smaller, and validates it in
    lax mode like JSON input.

    Instances of subclasses of ``model`` are accepted and stored as ``model``:
    fields only the subclass has are dropped, and decoding returns a
    ``model``. Fields are written under their aliases (unless the model
    disables validation by alias) so that they validate back, and computed
    fields are left out.

    Every dump is validated back before it is returned, and what would not
    read back is refused with an error rather than stored: an instance
    pydantic never validated (``model_construct``) or changed since (an
    assignment while ``validate_assignment`` is off) may be missing fields or
    hold values its model refuses. Also:

    - a NaN or infinite float, which pydantic writes as ``null`` in JSON
      unless the model sets ``ser_json_inf_nan``, is refused when it would
      read back as None or not at all; ``format="msgpack"`` stores those
      floats as they are;
    - a model with a required field excluded from dumps (``Field(exclude=True)``)
      is refused when the coder is made.

    Not ordered.
    """

    def __init__(self, model: type[M], format: Literal["json", "msgpack"] = "json") -> None:
        """Code instances of ``model`` (a ``BaseModel`` subclass) in ``format``."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"PydanticCoder needs a pydantic BaseModel subclass, got {model!r}")
        if format not in ("json", "msgpack"):
            raise ValueError(f"format must be 'json' or 'msgpack', got {format!r}")
        unreadable = [
            name
            for name, field in model.model_fields.items()
            if field.exclude is True and field.is_required()
        ]
        if unreadable:
            raise TypeError(
                f"PydanticCoder({model.__qualname__}): fields {unreadable} are required but "
                "excluded from dumps (Field(exclude=True)), so no record could be read back; "
                "give them a default or stop excluding them"
            )
        self.model = model
        self.format = format
        self._by_alias = model.model_config.get("validate_by_alias", True) is not False
        self._core: tuple[Any, Any] | None = None

    def _core_of_model(self) -> tuple[Any, Any]:
        """The model's core serializer and validator, kept once the model is complete.

        Looking them up on the class costs more than the rest of the Python
        work of a small dump; a model with forward references not resolved
        yet gets them at each call, until it is complete.
        """
        core = (self.model.__pydantic_serializer__, self.model.__pydantic_validator__)
        if self.model.__pydantic_complete__:
            self._core = core
        return core

    def serialize(self, obj: M) -> bytes:
        """Dump ``obj``, which must be an instance of the model class, and check it reads back."""
        if not isinstance(obj, self.model):
            raise encode_error(self, obj, f"expected an instance of {self.model.__qualname__}")
        # The model's own serializer and validator: TypeAdapter adds a Python
        # layer per call (about 1 us), which pays for much of the check below.
        # Serializer warnings are left out: the check says what is wrong.
        serializer, validator = self._core or self._core_of_model()
        try:
            if self.format == "json":
                dumped: bytes = serializer.to_json(
                    obj, by_alias=self._by_alias, exclude_computed_fields=True, warnings=False
                )
            else:
                data = serializer.to_python(
                    obj,
                    mode="json",
                    by_alias=self._by_alias,
                    exclude_computed_fields=True,
                    warnings=False,
                )
                dumped = msgpack.packb(data, use_bin_type=True)
        # PydanticSerializationError is a ValueError; msgpack raises OverflowError
        # for ints beyond 64 bits.
        except (ValueError, TypeError, OverflowError) as e:
            raise encode_error(self, obj, str(e)) from None
        try:
            if self.format == "json":
                back = validator.validate_json(dumped)
            else:  # what unpacking gives back, validated as deserialize does
                back = validator.validate_python(data, strict=False)
        except ValidationError as e:
            if self.format == "json" and _non_finite_floats(obj):
                raise self._non_finite_error(obj) from None
            first = str(e).splitlines()[1:3]
            raise encode_error(
                self, obj, f"its dump would not read back ({'; '.join(first)})"
            ) from None
        # A null may be what pydantic wrote for a NaN or an infinity: it must
        # not read back as None.
        if (
            self.format == "json"
            and b"null" in dumped
            and _non_finite_floats(back) != _non_finite_floats(obj)
        ):
            raise self._non_finite_error(obj)
        return dumped

    def _non_finite_error(self, obj: M) -> EncodeError:
        return encode_error(
            self,
            obj,
            "a NaN or infinite float would be stored as null in JSON and read back as "
            "None or not at all; use format='msgpack', or set the model's ser_json_inf_nan",
        )

    def deserialize(self, buf: Buffer) -> M:
        """Parse and validate ``buf`` into a model instance."""
        try:
            # The model's core validator: model_validate_json and TypeAdapter
            # each add a Python layer per call.
            validator = (self._core or self._core_of_model())[1]
            if self.format == "json":
                back: M = validator.validate_json(buf if type(buf) is bytes else bytes(buf))
                return back
            data: Any = msgpack.unpackb(buf, raw=False, strict_map_key=False)
            back = validator.validate_python(data, strict=False)
            return back
        except ValidationError as e:
            raise decode_error(self, buf, str(e)) from None
        # msgpack may raise any exception on malformed input.
        except Exception as e:
            raise decode_error(self, buf, f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        name = self.model.__qualname__
        if self.format == "json":
            return f"PydanticCoder({name})"
        return f"PydanticCoder({name}, format={self.format!r})"


def _non_finite_floats(value: Any) -> int:
    """How many NaN or infinite floats ``value`` holds (in models, extras and containers)."""
    if isinstance(value, float):
        return 0 if math.isfinite(value) else 1
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}
        return _non_finite_floats(value.__dict__) + _non_finite_floats(extra)
    if isinstance(value, dict):
        return sum(_non_finite_floats(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(_non_finite_floats(v) for v in value)
    return 0
