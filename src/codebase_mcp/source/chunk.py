"""Cut a source file into chunks for embedding.

Parsed languages (see ``languages.GRAMMARS``, and ``chunk_rules.RULES`` for what their
nodes mean): one chunk per top-level definition; a class-like container (class, struct,
interface, impl, trait, namespace, module ...) with methods is cut into one chunk per
method plus "shell" chunks for the rest of the container (header, fields, text between
methods), with the container's symbol. Decorators,
attributes and comments right above a definition belong to it. Code between definitions
becomes ``gap`` chunks. Other languages, and any parse failure, get line windows.

Guarantees, for every file:
- chunks are whole lines (except one line longer than ``max_chars``, cut into pieces),
  in file order, never overlapping, and together cover every non-blank line;
- no chunk starts or ends with a blank line;
- no chunk exceeds ``max_lines`` lines or ``max_chars`` characters: larger ones are split
  at line boundaries, preferring the start of a child node or a blank line.

A ``Chunker`` caches one tree-sitter parser per grammar; parsers are not thread-safe, so
use one ``Chunker`` per thread (``chunk_source`` keeps one per thread for you).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog
import tree_sitter_language_pack
from tree_sitter import Node, Parser

from codebase_mcp.source.chunk_rules import (
    BODY_TYPES,
    DECLARATOR_NAMES,
    FUNCTION,
    FUNCTION_VALUES,
    GAP,
    KIND_KEYWORDS,
    METHOD,
    METHOD_OWNERS,
    NAME_TYPES,
    RULES,
    WINDOW,
    Rules,
)
from codebase_mcp.source.languages import grammar_for

log = structlog.get_logger(__name__)
# The pack types its argument as a Literal of grammar names; ours come from a table.
_get_parser = cast("Callable[[str], Parser]", tree_sitter_language_pack.get_parser)


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    """Size limits. ``window_lines``: lines per window for unparsed languages."""

    max_chars: int = 1500
    max_lines: int = 60
    window_lines: int = 60

    def __post_init__(self) -> None:
        if self.max_chars < 80 or self.max_lines < 1 or self.window_lines < 1:
            raise ValueError(
                "chunk limits too small: max_chars >= 80, max_lines >= 1, window_lines >= 1"
            )


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a file. Lines are 1-based and inclusive; ``text`` is those lines joined
    with ``\\n`` (no trailing newline; CRLF read as LF). ``symbol`` is the qualified name of
    the definition (``Foo.bar``) or None for gaps and windows (markdown windows carry the
    heading they fall under). ``kind`` is function, method, class, struct, enum,
    interface, impl, trait, module, namespace, type, gap, window ... The pieces of a
    definition split for size all keep its kind and symbol."""

    start_line: int
    end_line: int
    text: str
    kind: str
    symbol: str | None
    language: str | None


_MAX_DEPTH = 40
_MAX_SYMBOL = 200


# --------------------------------------------------------------------------------------
# Tree walking: definitions -> segments (0-based inclusive rows, non-overlapping, in order)


@dataclass(slots=True)
class _Seg:
    start: int
    end: int
    kind: str
    symbol: str | None
    node: Node | None  # its descendants' start rows are the preferred split points


@dataclass(slots=True)
class _Def:
    start: int  # includes the comments/attributes attached above
    end: int
    node: Node  # the definition itself (inside any wrapper)
    kind: str


def _end_row(node: Node) -> int:
    """Last row holding text of the node (a node ending at column 0 ends on the row before)."""
    end = node.end_point
    start_row = node.start_point.row
    if end.column == 0 and end.row > start_row:
        return end.row - 1
    return end.row


def _text(node: Node) -> str:
    raw = node.text
    return raw.decode("utf-8", "replace") if raw is not None else ""


def _body(node: Node) -> Node | None:
    body = node.child_by_field_name("body")
    if body is not None:
        return body
    for child in reversed(node.named_children):
        if child.type in BODY_TYPES:
            return child
    return None


def _declarator_name(node: Node) -> Node | None:
    """C/C++: follow declarator fields (pointer, function, reference) down to the name."""
    decl = node.child_by_field_name("declarator")
    for _ in range(_MAX_DEPTH):
        if decl is None or decl.type in DECLARATOR_NAMES:
            return decl
        decl = decl.child_by_field_name("declarator")
    return None


def _name(node: Node) -> str | None:
    kind = node.type
    name_node = node.child_by_field_name("name")
    if name_node is None:
        if kind == "impl_item":
            name_node = node.child_by_field_name("type")
        elif kind == "type_declaration":
            spec = next(iter(node.named_children), None)
            name_node = spec.child_by_field_name("name") if spec is not None else None
        else:
            name_node = _declarator_name(node)
    if name_node is None:
        name_node = next((c for c in node.named_children if c.type in NAME_TYPES), None)
    if name_node is None:
        return None
    name = _text(name_node).split("\n", 1)[0].strip()
    if kind == "impl_item":
        name = name.split("<", 1)[0].strip()  # impl<T> Foo<T> -> Foo
    receiver = node.child_by_field_name("receiver") if kind == "method_declaration" else None
    if receiver is not None:  # Go: func (p *Point) Add -> Point.Add
        receiver_type = next((d.child_by_field_name("type") for d in receiver.named_children), None)
        if receiver_type is not None:
            owner = _text(receiver_type).lstrip("*&").split("[", 1)[0].strip()
            name = f"{owner}.{name}"
    return name[:_MAX_SYMBOL] or None


def _refine_kind(node: Node, kind: str) -> str:
    """The kind a shared node type stands for (Go type specs, Kotlin/Swift declarations)."""
    if node.type == "type_declaration":
        spec = next(iter(node.named_children), None)
        shape = spec.child_by_field_name("type") if spec is not None else None
        if shape is not None and shape.type == "struct_type":
            return "struct"
        if shape is not None and shape.type == "interface_type":
            return "interface"
    elif node.type == "class_declaration":
        for child in node.children[:4]:
            if not child.is_named and child.type in KIND_KEYWORDS:
                return child.type
    return kind


def _qualify(owner: str | None, name: str | None) -> str | None:
    if name is None:
        return owner
    if owner is None:
        return name
    return f"{owner}.{name}"[:_MAX_SYMBOL]


def _definition(node: Node, rules: Rules, depth: int = 0) -> tuple[str, Node] | None:
    """(kind, definition node) if ``node`` is a definition or wraps one."""
    node_type = node.type
    kind = rules.defs.get(node_type)
    if kind is not None:
        if node_type in rules.need_body and _body(node) is None:
            return None
        if node_type in rules.multiline and node.end_point.row == node.start_point.row:
            return None
        return _refine_kind(node, kind), node
    if node_type in rules.wrappers and depth < 3:
        field_name = rules.wrappers[node_type]
        inner = node.child_by_field_name(field_name) if field_name else None
        for candidate in [inner] if inner is not None else node.named_children:
            found = _definition(candidate, rules, depth + 1)
            if found is not None:
                return found
        return None
    if node_type in rules.variables:
        return _function_variable(node)
    return None


def _function_variable(node: Node) -> tuple[str, Node] | None:
    """JS/TS ``const f = () => ...`` and class fields holding a function."""
    value = node.child_by_field_name("value")
    named = node
    if value is None:
        declarator = next((c for c in node.named_children if c.type == "variable_declarator"), None)
        if declarator is None:
            return None
        value = declarator.child_by_field_name("value")
        named = declarator
    if value is not None and value.type in FUNCTION_VALUES:
        return FUNCTION, named
    return None


def _members(node: Node, rules: Rules, depth: int) -> list[_Def]:
    """The definitions among ``node``'s children, each with its leading comments."""
    found: list[_Def] = []
    lead_start = -1  # first row of the run of leading comments/attributes, or -1
    lead_end = -1
    prev_end = -1
    for child in node.named_children:
        start = child.start_point.row
        end = _end_row(child)
        if child.type in rules.leading:
            if start > prev_end:  # a comment after code on the same row trails that code
                if lead_start < 0 or start > lead_end + 1:
                    lead_start = start
                lead_end = end
            prev_end = max(prev_end, end)
            continue
        definition = _definition(child, rules)
        if definition is not None:
            kind, inner = definition
            if lead_start >= 0 and lead_end >= start - 1:
                start = lead_start
            found.append(_Def(start, end, inner, kind))
        elif child.type in rules.transparent and depth < _MAX_DEPTH:
            found.extend(_members(child, rules, depth + 1))
        lead_start = lead_end = -1
        prev_end = max(prev_end, end)
    return found


def _emit(
    owner: tuple[int, int, str, str | None, Node | None],
    members: list[_Def],
    rules: Rules,
    depth: int,
    out: list[_Seg],
) -> None:
    """Segments of a container spanning rows ``owner[:2]``: one per member (recursively)
    and shell pieces (the container's kind and symbol) for the rows between them."""
    start, end, kind, symbol, node = owner
    cursor = start
    for member in members:
        if member.start < cursor:  # shares a row with what came before: fold into it
            if out and member.end > out[-1].end:
                out[-1].end = member.end
            cursor = max(cursor, member.end + 1)
            continue
        if member.start > cursor:
            out.append(_Seg(cursor, member.start - 1, kind, symbol, node))
        member_kind = member.kind
        if member_kind == FUNCTION and kind in METHOD_OWNERS:
            member_kind = METHOD
        qualified = _qualify(symbol, _name(member.node))
        inner: list[_Def] = []
        if member.node.type in rules.containers and depth < _MAX_DEPTH:
            body = _body(member.node)
            if body is not None:
                inner = _members(body, rules, depth + 1)
            # A member on the header's row (`trait T { fn t() {} }`): keep the container whole.
            if inner and inner[0].start <= member.node.start_point.row:
                inner = []
        if inner:
            span = (member.start, member.end, member_kind, qualified, member.node)
            _emit(span, inner, rules, depth + 1, out)
        else:
            out.append(_Seg(member.start, member.end, member_kind, qualified, member.node))
        cursor = member.end + 1
    if cursor <= end:
        out.append(_Seg(cursor, end, kind, symbol, node))


# --------------------------------------------------------------------------------------
# Segments -> chunks: trim blank rows, fold trivial pieces, split by size.


class _Lines:
    """A file's lines with the per-row facts the splitter needs."""

    __slots__ = ("blank", "cum", "lines")

    def __init__(self, text: str) -> None:
        self.lines = lines = text.split("\n")
        self.blank = [not line or line.isspace() for line in lines]
        # cum[i]: characters (newlines included) before row i
        self.cum = list(itertools.accumulate([len(line) + 1 for line in lines], initial=0))

    def chars(self, start: int, end: int) -> int:
        return self.cum[end + 1] - self.cum[start] - 1

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start : end + 1])


def _trim(lines: _Lines, start: int, end: int) -> tuple[int, int]:
    blank = lines.blank
    while start <= end and blank[start]:
        start += 1
    while end >= start and blank[end]:
        end -= 1
    return start, end


_FILLER_WORDS = frozenset(
    {"else", "elif", "try", "finally", "end", "do", "done", "fi", "esac", "then", "begin"}
)


def _is_trivial(lines: _Lines, seg: _Seg) -> bool:
    """Closing braces, ``end``, ``else:`` and the like: not worth a chunk of their own."""
    if seg.end - seg.start > 2 or lines.chars(seg.start, seg.end) > 40:
        return False
    text = lines.text(seg.start, seg.end).strip()
    if len(text) <= 3 or not any(ch.isalnum() for ch in text):
        return True
    words = "".join(ch if ch.isalnum() else " " for ch in text).split()
    return all(word in _FILLER_WORDS for word in words)


def _hint_rows(node: Node, limit: int = 4000) -> list[set[int]]:
    """Start rows of the node's named descendants, one set per level (three levels):
    split points, shallower ones better (a statement before an argument)."""
    levels: list[set[int]] = []
    level = [node]
    total = 0
    for _ in range(3):
        following = [child for parent in level for child in parent.named_children]
        if not following:
            break
        rows = {child.start_point.row for child in following}
        levels.append(rows)
        total += len(rows)
        if total > limit:
            break
        level = following
    return levels


def _cut_row(start: int, fit: int, hints: list[set[int]], blank: list[bool]) -> int:
    """First row of the next piece when rows ``start..fit`` fit: the latest hint row of the
    shallowest level that has one (a child node's start, a heading), else the latest row
    after a blank one, else ``fit + 1``; never so early that the piece would be tiny."""
    floor = start + max(1, (fit - start + 1) // 3)
    rows = range(fit + 1, floor, -1)
    for level in hints:
        cut = next((r for r in rows if r in level), 0)
        if cut:
            return cut
    return next((r for r in rows if blank[r - 1]), fit + 1)


class Chunker:
    """Chunks files; holds the parser cache. Not thread-safe: one per thread."""

    def __init__(self, options: ChunkOptions | None = None) -> None:
        self.options = options or ChunkOptions()
        self._parsers: dict[str, Parser | None] = {}

    def chunk(self, text: str, language: str | None, data: bytes | None = None) -> list[Chunk]:
        """Chunks of ``text`` (a whole file) in file order. ``data``: the file's bytes, if
        at hand (saves encoding ``text`` again). Never raises for bad source."""
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # same rows; no stray \r in chunk text
        lines = _Lines(text)
        grammar = grammar_for(language)
        rules = RULES.get(language) if language is not None else None
        if grammar is not None and rules is not None:
            try:
                segments = self._segments(
                    data if data is not None else text.encode(), grammar, rules
                )
            except Exception as exc:  # any parser trouble: fall back to windows
                log.warning("chunk.parse_failed", language=language, error=repr(exc))
                segments = None
            if segments is not None:
                return self._finish(segments, lines, language)
        return self._windows(lines, language)

    def _parser(self, grammar: str) -> Parser | None:
        if grammar not in self._parsers:
            try:
                parser: Parser | None = _get_parser(grammar)
            except Exception as exc:  # a grammar missing from the pack: windows instead
                log.warning("chunk.no_grammar", grammar=grammar, error=repr(exc))
                parser = None
            self._parsers[grammar] = parser
        return self._parsers[grammar]

    def _segments(self, data: bytes, grammar: str, rules: Rules) -> list[_Seg] | None:
        parser = self._parser(grammar)
        if parser is None:
            return None
        root = parser.parse(data).root_node
        last_row = data.count(b"\n")
        out: list[_Seg] = []
        _emit((0, last_row, GAP, None, root), _members(root, rules, 0), rules, 0, out)
        return out

    def _finish(self, segments: list[_Seg], lines: _Lines, language: str | None) -> list[Chunk]:
        kept: list[_Seg] = []
        fold_start = -1  # a trivial piece before any kept segment waits for the next one
        last_row = len(lines.lines) - 1
        for seg in segments:
            seg.end = min(seg.end, last_row)
            seg.start, seg.end = _trim(lines, seg.start, seg.end)
            if seg.start > seg.end:
                continue
            if _is_trivial(lines, seg):
                if kept:
                    kept[-1].end = seg.end
                elif fold_start < 0:
                    fold_start = seg.start
                continue
            if fold_start >= 0:
                seg.start = fold_start
                fold_start = -1
            kept.append(seg)
        if fold_start >= 0:  # nothing but trivial pieces
            kept.append(_Seg(fold_start, _trim(lines, fold_start, last_row)[1], GAP, None, None))
        chunks: list[Chunk] = []
        for seg in kept:
            self._split(seg, lines, language, chunks, max_lines=self.options.max_lines)
        return chunks

    def _windows(self, lines: _Lines, language: str | None) -> list[Chunk]:
        chunks: list[Chunk] = []
        headings: list[int] = []
        if language == "markdown":
            headings = [i for i, line in enumerate(lines.lines) if line.startswith("#")]
        seg = _Seg(0, len(lines.lines) - 1, WINDOW, None, None)
        self._split(
            seg, lines, language, chunks, max_lines=self.options.window_lines, hints=[set(headings)]
        )
        if headings:
            titled: list[Chunk] = []
            for chunk in chunks:
                at = bisect.bisect_right(headings, chunk.start_line - 1) - 1
                symbol = lines.lines[headings[at]].lstrip("#").strip() if at >= 0 else None
                titled.append(
                    Chunk(
                        chunk.start_line,
                        chunk.end_line,
                        chunk.text,
                        WINDOW,
                        symbol or None,
                        language,
                    )
                )
            chunks = titled
        return chunks

    def _split(
        self,
        seg: _Seg,
        lines: _Lines,
        language: str | None,
        out: list[Chunk],
        *,
        max_lines: int,
        hints: list[set[int]] | None = None,
    ) -> None:
        """Append ``seg`` as chunks no larger than the limits, cutting at line boundaries
        (a child node's first row or the row after a blank one, as late as possible)."""
        max_chars = self.options.max_chars
        start, end = _trim(lines, seg.start, seg.end)
        if start > end:
            return
        if end - start < max_lines and lines.chars(start, end) <= max_chars:
            out.append(
                Chunk(start + 1, end + 1, lines.text(start, end), seg.kind, seg.symbol, language)
            )
            return
        if hints is None:
            hints = _hint_rows(seg.node) if seg.node is not None else []
        cum, blank = lines.cum, lines.blank
        while start <= end:
            # last row r such that rows start..r fit both limits
            fit = bisect.bisect_right(cum, cum[start] + max_chars + 1) - 2
            fit = min(fit, start + max_lines - 1, end)
            if fit < start:  # one row longer than max_chars: cut it into pieces
                long_line = lines.lines[start]
                for offset in range(0, len(long_line), max_chars):
                    piece = long_line[offset : offset + max_chars]
                    out.append(Chunk(start + 1, start + 1, piece, seg.kind, seg.symbol, language))
                start, end = _trim(lines, start + 1, end)
                continue
            cut = fit + 1  # first row of the next piece
            if fit < end:
                cut = _cut_row(start, fit, hints, blank)
            piece_start, piece_end = _trim(lines, start, cut - 1)
            if piece_start <= piece_end:
                text = lines.text(piece_start, piece_end)
                out.append(
                    Chunk(piece_start + 1, piece_end + 1, text, seg.kind, seg.symbol, language)
                )
            start, end = _trim(lines, cut, end)


_local = threading.local()


def chunk_source(
    text: str, language: str | None, options: ChunkOptions | None = None, data: bytes | None = None
) -> list[Chunk]:
    """``Chunker(options).chunk(text, language, data)`` with a per-thread cached Chunker."""
    options = options or ChunkOptions()
    chunker: Chunker | None = getattr(_local, "chunker", None)
    if chunker is None or chunker.options != options:
        chunker = Chunker(options)
        _local.chunker = chunker
    return chunker.chunk(text, language, data)
