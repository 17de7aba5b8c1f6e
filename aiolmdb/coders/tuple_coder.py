"""Composite (tuple) keys."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["TupleCoder"]

TT = TypeVar("TT", bound=tuple[Any, ...])
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
F = TypeVar("F")


class TupleCoder(Coder[TT]):
    """Ordered composite keys: a tuple whose elements have their own ordered coders.

    Each element is written with its coder's :meth:`~Coder.encode_element`:
    fixed-width encodings (ints, UUIDs, datetimes) as they are, others
    (strings, bytes) escaped and terminated (0x00 becomes 0x00 0xFF, then
    0x00 0x00 ends the element). Every element encoding is self-delimiting
    and order-preserving whatever follows it, so byte order is tuple order,
    element by element, as in the FoundationDB tuple layer.

    A tuple's encoding has no terminator of its own: it is the concatenation
    of its elements. So :meth:`serialize_prefix` of the first ``n`` elements is
    a byte prefix of exactly the keys that start with those elements.

    TupleCoders nest: an inner TupleCoder has a fixed number of
    self-delimiting elements, so it needs no escaping.

    Every element coder must be ordered (``TypeError`` otherwise). Typed for
    1 to 6 elements, e.g. ``TupleCoder(StringCoder(), Int64Coder())`` is a
    ``TupleCoder[tuple[str, int]]``; longer ones are ``tuple[Any, ...]``.
    """

    ordered = True

    @overload
    def __init__(self: TupleCoder[tuple[A]], c1: Coder[A], /) -> None: ...
    @overload
    def __init__(self: TupleCoder[tuple[A, B]], c1: Coder[A], c2: Coder[B], /) -> None: ...
    @overload
    def __init__(
        self: TupleCoder[tuple[A, B, C]], c1: Coder[A], c2: Coder[B], c3: Coder[C], /
    ) -> None: ...
    @overload
    def __init__(
        self: TupleCoder[tuple[A, B, C, D]],
        c1: Coder[A],
        c2: Coder[B],
        c3: Coder[C],
        c4: Coder[D],
        /,
    ) -> None: ...
    @overload
    def __init__(
        self: TupleCoder[tuple[A, B, C, D, E]],
        c1: Coder[A],
        c2: Coder[B],
        c3: Coder[C],
        c4: Coder[D],
        c5: Coder[E],
        /,
    ) -> None: ...
    @overload
    def __init__(
        self: TupleCoder[tuple[A, B, C, D, E, F]],
        c1: Coder[A],
        c2: Coder[B],
        c3: Coder[C],
        c4: Coder[D],
        c5: Coder[E],
        c6: Coder[F],
        /,
    ) -> None: ...
    @overload
    def __init__(self: TupleCoder[tuple[Any, ...]], *coders: Coder[Any]) -> None: ...
    def __init__(self, *coders: Coder[Any]) -> None:
        """Build a coder for tuples whose i-th element is encoded by ``coders[i]``."""
        if not coders:
            raise TypeError("TupleCoder needs at least one element coder")
        for i, coder in enumerate(coders):
            if not isinstance(coder, Coder):
                raise TypeError(f"TupleCoder element {i} is not a Coder: {coder!r}")
            if not coder.ordered:
                raise TypeError(
                    f"TupleCoder element {i} needs an ordered coder, {coder!r} is not ordered"
                )
        self.coders: tuple[Coder[Any], ...] = coders
        widths = [c.fixed_width for c in coders]
        self.fixed_width = None if None in widths else sum(w for w in widths if w is not None)

    def serialize(self, obj: TT) -> bytes:
        """Encode a tuple of exactly as many elements as there are coders."""
        if not isinstance(obj, tuple) or len(obj) != len(self.coders):
            raise encode_error(self, obj, f"expected a tuple of {len(self.coders)} elements")
        return self._encode_elements(obj)

    def deserialize(self, buf: Buffer) -> TT:
        """Decode a whole tuple; trailing bytes are an error."""
        data = bytes(buf)
        value, end = self.decode_element(data, 0)
        if end != len(data):
            raise decode_error(self, buf, f"{len(data) - end} trailing bytes after the tuple")
        return value

    def serialize_prefix(self, prefix: object) -> bytes:
        """Encode a tuple of the first ``n`` elements (``0 <= n <= arity``).

        The result is a byte prefix of the key of every tuple whose first
        ``n`` elements equal ``prefix`` and of no other.
        """
        if not isinstance(prefix, tuple) or len(prefix) > len(self.coders):
            raise encode_error(
                self, prefix, f"a prefix must be a tuple of at most {len(self.coders)} elements"
            )
        return self._encode_elements(prefix)

    def encode_element(self, obj: TT) -> bytes:
        """Encode a nested tuple: already self-delimiting, so as :meth:`serialize` does."""
        return self.serialize(obj)

    def decode_element(self, buf: bytes, offset: int) -> tuple[TT, int]:
        """Decode a nested tuple starting at ``offset``."""
        values: list[Any] = []
        for i, coder in enumerate(self.coders):
            try:
                value, offset = coder.decode_element(buf, offset)
            # Custom coders may raise plain ValueError/TypeError; DecodeError is a ValueError.
            except (ValueError, TypeError) as e:
                raise decode_error(self, buf, f"element {i}: {e}") from None
            values.append(value)
        result: Any = tuple(values)
        return result, offset

    def _encode_elements(self, obj: tuple[Any, ...]) -> bytes:
        parts: list[bytes] = []
        # obj may be shorter than self.coders (a prefix), never longer.
        for i, value in enumerate(obj):
            try:
                parts.append(self.coders[i].encode_element(value))
            # Custom coders may raise plain TypeError/ValueError; EncodeError is a TypeError.
            except (TypeError, ValueError) as e:
                raise encode_error(self, obj, f"element {i}: {e}") from None
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"TupleCoder({', '.join(map(repr, self.coders))})"
