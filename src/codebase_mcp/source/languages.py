"""Language detection from a file's name (and, for extension-less scripts, its shebang).

Pure tables and lookups. A language is a short lowercase name (``python``, ``tsx``,
``markdown`` ...). ``grammar_for`` tells whether the chunker parses it with tree-sitter
(the grammar name in tree-sitter-language-pack) or cuts it into line windows (None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# Languages parsed with tree-sitter: language -> tree-sitter-language-pack grammar name.
_GRAMMARS: dict[str, str] = {
    "python": "python",
    "javascript": "javascript",
    "typescript": "typescript",
    "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "csharp": "csharp",
    "ruby": "ruby",
    "php": "php",
    "kotlin": "kotlin",
    "swift": "swift",
    "scala": "scala",
    "bash": "bash",
}
GRAMMARS: Mapping[str, str] = MappingProxyType(_GRAMMARS)

_EXTENSIONS: dict[str, str] = {
    # parsed
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".ipp": "cpp",
    ".inl": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".rake": "ruby",
    ".gemspec": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".swift": "swift",
    ".scala": "scala",
    ".sc": "scala",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "bash",
    # line windows
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".text": "text",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".toml": "toml",
    ".json": "json",
    ".jsonc": "json",
    ".json5": "json",
    ".sql": "sql",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".vue": "vue",
    ".svelte": "svelte",
    ".css": "css",
    ".scss": "scss",
    ".sass": "scss",
    ".less": "less",
    ".xml": "xml",
    ".xsd": "xml",
    ".xsl": "xml",
    ".xslt": "xml",
    ".plist": "xml",
    ".csproj": "xml",
    ".ini": "ini",
    ".cfg": "ini",
    ".conf": "ini",
    ".properties": "ini",
    ".mk": "makefile",
    ".dockerfile": "dockerfile",
    ".proto": "protobuf",
    ".graphql": "graphql",
    ".gql": "graphql",
    ".lua": "lua",
    ".pl": "perl",
    ".pm": "perl",
    ".r": "r",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hs": "haskell",
    ".dart": "dart",
    ".zig": "zig",
    ".nim": "nim",
    ".jl": "julia",
    ".clj": "clojure",
    ".ml": "ocaml",
    ".mli": "ocaml",
    ".fs": "fsharp",
    ".vim": "vim",
    ".tf": "hcl",
    ".hcl": "hcl",
    ".ps1": "powershell",
    ".bat": "batch",
    ".cmd": "batch",
    ".cmake": "cmake",
    ".gradle": "groovy",
    ".groovy": "groovy",
    ".tex": "latex",
    ".adoc": "asciidoc",
    ".csv": "csv",
    ".tsv": "csv",
    ".env": "dotenv",
}

# Whole file names (compared case-sensitively first, then lowercased).
_FILENAMES: dict[str, str] = {
    "Dockerfile": "dockerfile",
    "Containerfile": "dockerfile",
    "Makefile": "makefile",
    "makefile": "makefile",
    "GNUmakefile": "makefile",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
    "Vagrantfile": "ruby",
    "Jenkinsfile": "groovy",
    "CMakeLists.txt": "cmake",
    ".bashrc": "bash",
    ".bash_profile": "bash",
    ".profile": "bash",
    ".zshrc": "bash",
    ".gitignore": "ignore",
    ".dockerignore": "ignore",
    ".editorconfig": "ini",
    ".gitattributes": "ini",
    ".gitmodules": "ini",
    "readme": "text",
    "license": "text",
    "licence": "text",
    "copying": "text",
    "notice": "text",
    "authors": "text",
    "changelog": "text",
    "changes": "text",
    "contributing": "text",
    "todo": "text",
}

_SHEBANG = re.compile(rb"^#![ \t]*(\S+)(?:[ \t]+(\S+))?")
_INTERPRETERS: dict[str, str] = {
    "python": "python",
    "sh": "bash",
    "bash": "bash",
    "zsh": "bash",
    "dash": "bash",
    "ksh": "bash",
    "node": "javascript",
    "ruby": "ruby",
    "php": "php",
    "perl": "perl",
    "deno": "typescript",
}


def detect_language(path: str) -> str | None:
    """Language of a file from its name (a relative or absolute path), or None if unknown.

    Looks at the whole file name first (``Dockerfile``, ``Makefile``), then the extension
    (case-insensitive), then name stems such as ``Dockerfile.dev`` or ``README``.
    """
    name = path.rsplit("/", 1)[-1]
    by_name = _FILENAMES.get(name)
    if by_name is not None:
        return by_name
    dot = name.rfind(".")
    if dot > 0:
        by_ext = _EXTENSIONS.get(name[dot:].lower())
        if by_ext is not None:
            return by_ext
    if name.startswith(".env"):
        return "dotenv"
    stem = name.split(".", 1)[0]
    if stem in ("Dockerfile", "Containerfile"):
        return "dockerfile"
    return _FILENAMES.get(stem.lower()) if stem else None


def detect_language_from_shebang(head: bytes) -> str | None:
    """Language of a script from its first line (``#!/usr/bin/env python3`` -> python)."""
    match = _SHEBANG.match(head)
    if match is None:
        return None
    program = match.group(1).rsplit(b"/", 1)[-1]
    if program == b"env" and match.group(2) is not None:
        program = match.group(2)
    # python3.11 -> python, bash5 -> bash
    base = program.decode("ascii", "replace").rstrip("0123456789.")
    return _INTERPRETERS.get(base)


def grammar_for(language: str | None) -> str | None:
    """tree-sitter-language-pack grammar name for a language, or None (line windows)."""
    if language is None:
        return None
    return _GRAMMARS.get(language)
