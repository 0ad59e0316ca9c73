"""Chunking: definitions per language, containers split into methods + shell, gaps,
windows, size limits, and the file-wide invariants (no overlap, every non-blank line
covered) on fixtures and on real standard-library files."""

from __future__ import annotations

import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from codebase_mcp.source import chunk as chunk_module
from codebase_mcp.source.chunk import Chunk, Chunker, ChunkOptions, chunk_source
from codebase_mcp.source.languages import GRAMMARS, detect_language

# One file per parsed language: (file name, source, {symbol: kind} that must come out).
SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "app.py": (
        '''"""Module doc."""
import os

X = 1


@decorator
def top(a, b):
    """Doc."""
    return a + b


class Foo(Base):
    """Foo doc."""

    attr = 3

    def bar(self):
        return 1

    # comment on baz
    @property
    def baz(self):
        return 2


if __name__ == "__main__":
    top(1, 2)
''',
        {"top": "function", "Foo": "class", "Foo.bar": "method", "Foo.baz": "method"},
    ),
    "main.go": (
        """package main

import "fmt"

// Point is a point.
type Point struct {
	X, Y int
}

// Add adds.
func (p *Point) Add(q Point) Point {
	return Point{p.X + q.X, p.Y + q.Y}
}

func main() {
	fmt.Println("hi")
}
""",
        {"Point": "struct", "Point.Add": "method", "main": "function"},
    ),
    "lib.rs": (
        """use std::fmt;

/// A counter.
#[derive(Debug)]
pub struct Counter {
    n: u32,
}

impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    /// Increment.
    #[inline]
    pub fn incr(&mut self) {
        self.n += 1;
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.n)
    }
}

pub trait Shape {
    fn area(&self) -> f64;
}

pub enum Color { Red, Green }

fn main() {}
""",
        {
            "Counter": "impl",
            "Counter.new": "method",
            "Counter.incr": "method",
            "Counter.fmt": "method",
            "Shape": "trait",
            "Color": "enum",
            "main": "function",
        },
    ),
    "Greeter.java": (
        """package com.example;

import java.util.List;

/** Greeter. */
public class Greeter {
    private final String name;

    public Greeter(String name) {
        this.name = name;
    }

    @Override
    public String greet() {
        return "hi " + name;
    }
}
""",
        {"Greeter": "class", "Greeter.Greeter": "method", "Greeter.greet": "method"},
    ),
    "app.tsx": (
        """import React from "react";

interface Props {
  name: string;
}

export function Hello({ name }: Props) {
  return <div>Hello {name}</div>;
}

export const Button = ({ label }: { label: string }) => {
  return <button>{label}</button>;
};

export default class App extends React.Component<Props> {
  state = { n: 0 };

  render() {
    return <Hello name="x" />;
  }
}
""",
        {
            "Props": "interface",
            "Hello": "function",
            "Button": "function",
            "App": "class",
            "App.render": "method",
        },
    ),
    "repo.ts": (
        """type Id = string;
export type Pair = {
  left: Id;
  right: Id;
};
export enum Kind { A, B }
export abstract class Repo<T> {
  private items: T[] = [];
  add(item: T): void {
    this.items.push(item);
  }
  abstract find(id: Id): T | undefined;
}
namespace NS {
  export function inside() {
    return 1;
  }
}
""",
        {
            "Pair": "type",
            "Kind": "enum",
            "Repo": "class",
            "Repo.add": "method",
            "NS.inside": "function",
        },
    ),
    "widget.js": (
        """const x = require("x");
function plain(a) { return a; }
class Widget {
  constructor() { this.a = 1; }
  draw() { return 2; }
}
const arrow = (a) => a * 2;
module.exports = { plain };
""",
        {
            "plain": "function",
            "Widget": "class",
            "Widget.constructor": "method",
            "Widget.draw": "method",
            "arrow": "function",
        },
    ),
    "point.c": (
        """#include <stdio.h>
#ifndef POINT_H
#define POINT_H

struct point { int x; int y; };

typedef int length_t;

typedef struct {
    int w, h;
} size_t2;

/* add numbers */
static int add(int a, int b) {
    return a + b;
}

int *ptr_fn(void) { return 0; }

#endif
""",
        {"point": "struct", "size_t2": "type", "add": "function", "ptr_fn": "function"},
    ),
    "shape.cpp": (
        """#include <string>
namespace geo {
class Shape {
public:
    virtual ~Shape() = default;
    virtual double area() const = 0;
    int id;
    double perimeter() const {
        return 0;
    }
};
template <typename T>
T maxOf(T a, T b) { return a > b ? a : b; }
}
double geo::Circle::area() const { return 3.14; }
""",
        {
            "geo.Shape": "class",
            "geo.Shape.perimeter": "method",
            "geo.maxOf": "function",
            "geo::Circle::area": "function",
        },
    ),
    "Account.cs": (
        """using System;
namespace Demo {
    public class Account {
        public int Balance { get; set; }
        public void Deposit(int amount) {
            Balance += amount;
        }
        public bool Withdraw(int amount) { return true; }
    }
    public interface IThing { void Do(); }
}
""",
        {
            "Demo.Account": "class",
            "Demo.Account.Deposit": "method",
            "Demo.Account.Withdraw": "method",
            "Demo.IThing": "interface",
        },
    ),
    "parser.rb": (
        """require "json"
module Util
  class Parser
    attr_reader :src
    def initialize(src)
      @src = src
    end
    def parse
      JSON.parse(@src)
    end
  end
end
def top_level; end
""",
        {
            "Util.Parser": "class",
            "Util.Parser.initialize": "method",
            "Util.Parser.parse": "method",
            "top_level": "function",
        },
    ),
    "user.php": (
        """<?php
namespace App;
use Foo\\Bar;
function helper($x) { return $x; }
class User {
    private $name;
    public function getName() {
        return $this->name;
    }
}
""",
        {"helper": "function", "User": "class", "User.getName": "method"},
    ),
    "Greeter.kt": (
        """package demo
import kotlin.math.*
data class P(val x: Int)
class Greeter(val name: String) {
    fun greet(): String {
        return "hi $name"
    }
    fun other() = 1
}
fun main() { println("x") }
""",
        {
            "P": "class",
            "Greeter": "class",
            "Greeter.greet": "method",
            "Greeter.other": "method",
            "main": "function",
        },
    ),
    "Greeter.swift": (
        """import Foundation
struct Point { var x: Int }
class Greeter {
    let name: String
    init(name: String) { self.name = name }
    func greet() -> String {
        return "hi \\(name)"
    }
}
func topLevel() {}
""",
        {
            "Point": "struct",
            "Greeter": "class",
            "Greeter.init": "method",
            "Greeter.greet": "method",
            "topLevel": "function",
        },
    ),
    "Main.scala": (
        """package demo
object Main {
  def main(args: Array[String]): Unit = {
    println("hi")
  }
}
class Greeter(name: String) {
  val x = 1
  def greet(): String = s"hi $name"
}
trait Shape { def area: Double }
""",
        {
            "Main": "object",
            "Main.main": "method",
            "Greeter": "class",
            "Greeter.greet": "method",
            "Shape": "trait",
        },
    ),
    "run.sh": (
        """#!/bin/bash
set -e
greet() {
  echo "hi $1"
}
function other {
  echo bye
}
greet world
""",
        {"greet": "function", "other": "function"},
    ),
}


def assert_invariants(text: str, chunks: list[Chunk], options: ChunkOptions) -> None:
    """Chunks are in order, never overlap, stay under the limits, hold exactly their
    lines' text, and together cover every non-blank line."""
    lines = text.replace("\r\n", "\n").split("\n")
    covered: set[int] = set()
    prev_end = 0
    for chunk in chunks:
        assert 1 <= chunk.start_line <= chunk.end_line <= len(lines), chunk
        assert len(chunk.text) <= options.max_chars, chunk
        limit = max(options.max_lines, options.window_lines)
        assert chunk.end_line - chunk.start_line + 1 <= limit, chunk
        expected = "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        if chunk.start_line == chunk.end_line and len(expected) > options.max_chars:
            # the one exception: a line longer than max_chars, cut into pieces
            assert chunk.text in expected
            assert chunk.start_line >= prev_end
        else:
            assert chunk.text == expected, chunk
            assert chunk.start_line > prev_end, f"overlap at {chunk}"
        assert chunk.text.strip(), "empty chunk"
        assert lines[chunk.start_line - 1].strip() and lines[chunk.end_line - 1].strip()
        prev_end = chunk.end_line
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    missing = [i + 1 for i, line in enumerate(lines) if line.strip() and i + 1 not in covered]
    assert not missing, f"lines not in any chunk: {missing}"


def test_fixtures_cover_every_parsed_language() -> None:
    languages = {detect_language(name) for name in SOURCES}
    assert languages == set(GRAMMARS), set(GRAMMARS) - languages


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_definitions_become_chunks(name: str) -> None:
    source, expected = SOURCES[name]
    language = detect_language(name)
    chunks = Chunker().chunk(source, language)
    assert_invariants(source, chunks, ChunkOptions())
    found = {c.symbol: c.kind for c in chunks if c.symbol is not None}
    for symbol, kind in expected.items():
        assert found.get(symbol) == kind, (symbol, kind, found)
    assert all(c.language == language for c in chunks)
    # a closing brace or `end` never stands alone
    assert not [c for c in chunks if c.text.strip() in {"}", "};", "end", ")"}]


def _by_symbol(chunks: list[Chunk]) -> dict[str | None, list[Chunk]]:
    out: dict[str | None, list[Chunk]] = {}
    for c in chunks:
        out.setdefault(c.symbol, []).append(c)
    return out


def test_python_class_is_split_into_methods_and_shell() -> None:
    source = SOURCES["app.py"][0]
    chunks = Chunker().chunk(source, "python")
    by_symbol = _by_symbol(chunks)
    (shell,) = by_symbol["Foo"]
    assert shell.text.startswith("class Foo(Base):")
    assert '"""Foo doc."""' in shell.text and "attr = 3" in shell.text
    assert "def bar" not in shell.text  # the methods are not stored twice
    (bar,) = by_symbol["Foo.bar"]
    assert bar.text == "    def bar(self):\n        return 1"
    (baz,) = by_symbol["Foo.baz"]
    # the comment and decorator right above belong to the method
    assert baz.text.startswith("    # comment on baz\n    @property\n    def baz(self):")
    (top,) = by_symbol["top"]
    assert top.text.startswith("@decorator\ndef top(a, b):")
    gaps = [c for c in chunks if c.kind == "gap"]
    assert gaps[0].text == '"""Module doc."""\nimport os\n\nX = 1'
    assert gaps[-1].text.startswith('if __name__ == "__main__":')


def test_doc_comments_and_attributes_belong_to_the_definition() -> None:
    rust = _by_symbol(Chunker().chunk(SOURCES["lib.rs"][0], "rust"))
    assert rust["Counter.incr"][0].text.startswith(
        "    /// Increment.\n    #[inline]\n    pub fn incr"
    )
    assert any(c.text.startswith("/// A counter.\n#[derive(Debug)]") for c in rust["Counter"])
    go = _by_symbol(Chunker().chunk(SOURCES["main.go"][0], "go"))
    assert go["Point.Add"][0].text.startswith("// Add adds.\nfunc (p *Point) Add")
    java = _by_symbol(Chunker().chunk(SOURCES["Greeter.java"][0], "java"))
    assert java["Greeter.greet"][0].text.lstrip().startswith("@Override")


def test_comment_separated_by_blank_line_stays_outside() -> None:
    source = "import os\n\n# a section banner\n\ndef f():\n    return 1\n"
    chunks = Chunker().chunk(source, "python")
    assert [(c.kind, c.symbol, c.start_line) for c in chunks] == [
        ("gap", None, 1),
        ("function", "f", 5),
    ]


def test_one_line_type_aliases_stay_in_their_gap() -> None:
    ts = Chunker().chunk(SOURCES["repo.ts"][0], "typescript")
    assert "Id" not in {c.symbol for c in ts}
    assert ts[0].kind == "gap" and ts[0].text == "type Id = string;"
    c = Chunker().chunk(SOURCES["point.c"][0], "c")
    assert "length_t" not in {c.symbol for c in c}


def test_python_definitions_under_if_and_try_get_chunks() -> None:
    source = """import sys

if sys.platform == "win32":
    def path_sep():
        return "\\\\"
else:
    def path_sep():
        return "/"

try:
    from _speedups import fast
except ImportError:
    def fast(x):
        return x
"""
    chunks = Chunker().chunk(source, "python")
    assert_invariants(source, chunks, ChunkOptions())
    assert [c.symbol for c in chunks if c.kind == "function"] == ["path_sep", "path_sep", "fast"]
    # `else:` alone is no chunk: it goes with the chunk before it
    assert not [c for c in chunks if c.text.strip() == "else:"]


def test_one_line_container_stays_whole() -> None:
    chunks = Chunker().chunk("trait T { fn t() {} }\n", "rust")
    assert [(c.kind, c.symbol) for c in chunks] == [("trait", "T")]


def test_oversized_definition_is_split_under_the_limits_at_statement_starts() -> None:
    body = "".join(f"    value_{i} = compute({i}, 'some argument text here')\n" for i in range(200))
    source = f"def big():\n{body}    return value_0\n\n\ndef small():\n    return 2\n"
    options = ChunkOptions(max_chars=800, max_lines=30)
    chunks = Chunker(options).chunk(source, "python")
    assert_invariants(source, chunks, options)
    big = [c for c in chunks if c.symbol == "big"]
    assert len(big) > 1
    assert all(c.kind == "function" for c in big)
    assert all(len(c.text) <= 800 and c.end_line - c.start_line < 30 for c in big)
    # cuts fall on statement boundaries: every piece after the first starts a statement
    assert all(c.text.startswith("    value_") or c.text.startswith("    return") for c in big[1:])
    assert [c.symbol for c in chunks if c.symbol != "big"] == ["small"]


def test_a_line_longer_than_the_limit_is_cut_into_pieces() -> None:
    line = "x = [" + ", ".join(str(i) for i in range(2000)) + "]"
    source = f"import os\n{line}\nprint(x)\n"
    options = ChunkOptions(max_chars=500)
    chunks = Chunker(options).chunk(source, "python")
    assert_invariants(source, chunks, options)
    pieces = [c for c in chunks if c.start_line == c.end_line == 2]
    assert len(pieces) > 1
    assert "".join(p.text for p in pieces) == line


def test_markdown_gets_windows_with_headings() -> None:
    sections = [f"# Part {n}\n\n" + "".join(f"line {n}.{i}\n" for i in range(25)) for n in range(4)]
    source = "\n".join(sections)
    options = ChunkOptions(window_lines=40)
    chunks = Chunker(options).chunk(source, "markdown")
    assert_invariants(source, chunks, options)
    assert {c.kind for c in chunks} == {"window"}
    assert len(chunks) >= 4
    # windows prefer to start at a heading, and carry the heading they fall under
    assert [c.symbol for c in chunks if c.text.startswith("# ")] == [f"Part {n}" for n in range(4)]
    assert all(c.symbol is not None and c.symbol.startswith("Part ") for c in chunks)


@pytest.mark.parametrize("language", ["yaml", "json", "text", None, "no-such-language"])
def test_text_and_unknown_languages_get_windows(language: str | None) -> None:
    source = "".join(f"key_{i}: value {i}\n" for i in range(130))
    options = ChunkOptions(window_lines=60)
    chunks = Chunker(options).chunk(source, language)
    assert_invariants(source, chunks, options)
    assert [(c.kind, c.start_line, c.end_line) for c in chunks] == [
        ("window", 1, 60),
        ("window", 61, 120),
        ("window", 121, 130),
    ]


def test_syntax_error_still_chunks() -> None:
    source = """import os

def good():
    return 1

def broken(:
    x = [1, 2
    return x

class After:
    def method(self):
        return 2
"""
    chunks = Chunker().chunk(source, "python")
    assert_invariants(source, chunks, ChunkOptions())
    assert "good" in {c.symbol for c in chunks}


def test_parser_failure_falls_back_to_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_pack(name: str) -> object:
        raise RuntimeError(f"no grammar {name}")

    monkeypatch.setattr(chunk_module, "_get_parser", broken_pack)
    source = SOURCES["app.py"][0]
    chunks = Chunker().chunk(source, "python")
    assert_invariants(source, chunks, ChunkOptions())
    assert {c.kind for c in chunks} == {"window"}


def test_empty_blank_and_crlf_files() -> None:
    chunker = Chunker()
    assert chunker.chunk("", "python") == []
    assert chunker.chunk("\n  \n\t\n", "python") == []
    assert chunker.chunk("", None) == []
    source = "def f():\r\n    return 1\r\n\r\ndef g():\r\n    return 2\r\n"
    chunks = chunker.chunk(source, "python")
    assert [(c.symbol, c.start_line, c.end_line) for c in chunks] == [("f", 1, 2), ("g", 4, 5)]
    assert not any("\r" in c.text for c in chunks)


def test_bytes_and_text_give_the_same_chunks() -> None:
    source = SOURCES["app.tsx"][0]
    assert Chunker().chunk(source, "tsx", source.encode()) == Chunker().chunk(source, "tsx")


def test_chunk_source_reuses_a_chunker_per_thread() -> None:
    source = SOURCES["main.go"][0]
    assert chunk_source(source, "go") == Chunker().chunk(source, "go")
    small = ChunkOptions(max_chars=100, max_lines=3)
    assert chunk_source(source, "go", small) == Chunker(small).chunk(source, "go")


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="chunk limits too small"):
        ChunkOptions(max_chars=10)
    with pytest.raises(ValueError, match="chunk limits too small"):
        ChunkOptions(max_lines=0)


def _stdlib_sample(count: int) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 400_000)
    step = max(1, len(files) // count)
    return files[::step][:count]


@pytest.mark.parametrize("options", [ChunkOptions(), ChunkOptions(max_chars=300, max_lines=12)])
def test_invariants_hold_on_real_files(options: ChunkOptions) -> None:
    """Real standard-library modules: no overlap, full coverage, limits respected."""
    sample = _stdlib_sample(40)
    assert len(sample) >= 20
    chunker = Chunker(options)
    kinds: set[str] = set()
    for path in sample:
        text = path.read_text(encoding="utf-8")
        chunks = chunker.chunk(text, "python")
        assert_invariants(text, chunks, options)
        kinds.update(c.kind for c in chunks)
    assert {"function", "class", "method", "gap"} <= kinds


def test_chunk_source_is_safe_across_threads() -> None:
    """Each thread gets its own Chunker (tree-sitter parsers are not thread-safe)."""
    names = sorted(SOURCES) * 4
    expected = {name: Chunker().chunk(SOURCES[name][0], detect_language(name)) for name in SOURCES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: chunk_source(SOURCES[n][0], detect_language(n)), names))
    assert all(result == expected[name] for name, result in zip(names, results, strict=True))
