"""What each grammar's tree-sitter nodes mean to the chunker: which node types are
definitions and of what kind, which are containers whose members get chunks of their
own, which wrap a definition (decorators, export, templates), and the node types that
hold names and bodies. Grammar knowledge only; the cutting is chunk.py's.

Adding a language: its grammar in languages.GRAMMARS, its rules in RULES (a grammar
without rules is cut into line windows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Chunk kinds. Definitions: the kind of the node. Shell pieces of a container carry the
# container's kind. GAP: code between definitions. WINDOW: line windows.
FUNCTION = "function"
METHOD = "method"
CLASS = "class"
GAP = "gap"
WINDOW = "window"


@dataclass(frozen=True, slots=True)
class Rules:
    # node type -> kind, for definitions chunked on their own
    defs: Mapping[str, str]
    # definition types whose body members (methods, nested classes) get their own chunks
    containers: frozenset[str] = frozenset()
    # node types wrapping one definition (decorators, export, template ...): the chunk spans
    # the wrapper; field name holding the definition, or "" to take the first definition child
    wrappers: Mapping[str, str] = field(default_factory=dict)
    # node types searched for definitions as if their children stood at this level
    transparent: frozenset[str] = frozenset({"ERROR"})
    # node types attached to the definition right below them (comments, attributes)
    leading: frozenset[str] = frozenset({"comment"})
    # definition types that count only with a body (not prototypes/abstract signatures)
    need_body: frozenset[str] = frozenset()
    # definition types that count only over several lines (a one-line typedef stays in
    # its gap rather than make a chunk of its own)
    multiline: frozenset[str] = frozenset()
    # variable declarations that define a function when their value is one (JS/TS)
    variables: frozenset[str] = frozenset()


_C_LIKE_TRANSPARENT = frozenset(
    {
        "ERROR",
        "preproc_if",
        "preproc_ifdef",
        "preproc_else",
        "preproc_elif",
        "preproc_elifdef",
        "linkage_specification",
        "declaration_list",
    }
)
_JS_DEFS = {
    "function_declaration": FUNCTION,
    "generator_function_declaration": FUNCTION,
    "class_declaration": CLASS,
    "abstract_class_declaration": CLASS,
    "class": CLASS,
    "method_definition": METHOD,
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "internal_module": "module",
    "module": "module",
}
_JS_RULES = Rules(
    defs=_JS_DEFS,
    containers=frozenset(
        {"class_declaration", "abstract_class_declaration", "class", "internal_module", "module"}
    ),
    wrappers={
        "export_statement": "declaration",
        "ambient_declaration": "",
        "expression_statement": "",
    },
    leading=frozenset({"comment", "decorator"}),
    need_body=frozenset({"function_declaration", "method_definition"}),
    multiline=frozenset({"type_alias_declaration"}),
    variables=frozenset(
        {
            "lexical_declaration",
            "variable_declaration",
            "public_field_definition",
            "field_definition",
        }
    ),
)
_C_RULES = Rules(
    defs={
        "function_definition": FUNCTION,
        "struct_specifier": "struct",
        "union_specifier": "union",
        "enum_specifier": "enum",
        "type_definition": "type",
    },
    transparent=_C_LIKE_TRANSPARENT,
    need_body=frozenset({"struct_specifier", "union_specifier", "enum_specifier"}),
    multiline=frozenset({"type_definition"}),
)
_CPP_RULES = Rules(
    defs={
        "function_definition": FUNCTION,
        "class_specifier": CLASS,
        "struct_specifier": "struct",
        "union_specifier": "union",
        "enum_specifier": "enum",
        "namespace_definition": "namespace",
        "concept_definition": "type",
        "type_definition": "type",
        "alias_declaration": "type",
    },
    containers=frozenset({"class_specifier", "struct_specifier", "namespace_definition"}),
    wrappers={"template_declaration": ""},
    transparent=_C_LIKE_TRANSPARENT,
    need_body=frozenset(
        {"class_specifier", "struct_specifier", "union_specifier", "enum_specifier"}
    ),
    multiline=frozenset({"type_definition", "alias_declaration"}),
)

RULES: dict[str, Rules] = {
    "python": Rules(
        defs={"function_definition": FUNCTION, "class_definition": CLASS},
        containers=frozenset({"class_definition"}),
        wrappers={"decorated_definition": "definition"},
        # definitions under `if sys.platform ...:` / `try: ... except ImportError:`
        transparent=frozenset(
            {
                *("ERROR", "if_statement", "elif_clause", "else_clause", "block"),
                *("try_statement", "except_clause", "finally_clause"),
            }
        ),
    ),
    "javascript": _JS_RULES,
    "typescript": _JS_RULES,
    "tsx": _JS_RULES,
    "go": Rules(
        defs={
            "function_declaration": FUNCTION,
            "method_declaration": METHOD,
            "type_declaration": "type",
        },
        multiline=frozenset({"type_declaration"}),
    ),
    "rust": Rules(
        defs={
            "function_item": FUNCTION,
            "struct_item": "struct",
            "enum_item": "enum",
            "union_item": "union",
            "trait_item": "trait",
            "impl_item": "impl",
            "mod_item": "module",
            "macro_definition": "macro",
        },
        containers=frozenset({"trait_item", "impl_item", "mod_item"}),
        leading=frozenset({"line_comment", "block_comment", "attribute_item"}),
        need_body=frozenset({"function_item", "mod_item"}),
    ),
    "java": Rules(
        defs={
            "class_declaration": CLASS,
            "interface_declaration": "interface",
            "enum_declaration": "enum",
            "record_declaration": "record",
            "annotation_type_declaration": "interface",
            "method_declaration": METHOD,
            "constructor_declaration": METHOD,
            "compact_constructor_declaration": METHOD,
        },
        containers=frozenset(
            {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}
        ),
        leading=frozenset({"line_comment", "block_comment"}),
        need_body=frozenset({"method_declaration"}),
    ),
    "c": _C_RULES,
    "cpp": _CPP_RULES,
    "csharp": Rules(
        defs={
            "class_declaration": CLASS,
            "struct_declaration": "struct",
            "interface_declaration": "interface",
            "record_declaration": "record",
            "record_struct_declaration": "record",
            "enum_declaration": "enum",
            "namespace_declaration": "namespace",
            "method_declaration": METHOD,
            "constructor_declaration": METHOD,
            "destructor_declaration": METHOD,
            "operator_declaration": METHOD,
            "conversion_operator_declaration": METHOD,
            "local_function_statement": FUNCTION,
            "delegate_declaration": "type",
        },
        containers=frozenset(
            {
                "class_declaration",
                "struct_declaration",
                "interface_declaration",
                "record_declaration",
                "record_struct_declaration",
                "namespace_declaration",
            }
        ),
        transparent=frozenset({"ERROR", "file_scoped_namespace_declaration"}),
        need_body=frozenset({"method_declaration", "operator_declaration"}),
    ),
    "ruby": Rules(
        defs={
            "method": FUNCTION,
            "singleton_method": METHOD,
            "class": CLASS,
            "module": "module",
            "singleton_class": CLASS,
        },
        containers=frozenset({"class", "module", "singleton_class"}),
    ),
    "php": Rules(
        defs={
            "function_definition": FUNCTION,
            "class_declaration": CLASS,
            "interface_declaration": "interface",
            "trait_declaration": "trait",
            "enum_declaration": "enum",
            "method_declaration": METHOD,
            "namespace_definition": "namespace",
        },
        containers=frozenset(
            {
                "class_declaration",
                "interface_declaration",
                "trait_declaration",
                "enum_declaration",
                "namespace_definition",
            }
        ),
        need_body=frozenset({"method_declaration", "namespace_definition"}),
    ),
    "kotlin": Rules(
        defs={
            "function_declaration": FUNCTION,
            "class_declaration": CLASS,
            "object_declaration": "object",
            "companion_object": "object",
        },
        containers=frozenset({"class_declaration", "object_declaration", "companion_object"}),
        leading=frozenset({"comment", "line_comment", "multiline_comment"}),
        need_body=frozenset({"function_declaration"}),
    ),
    "swift": Rules(
        defs={
            "function_declaration": FUNCTION,
            "class_declaration": CLASS,
            "protocol_declaration": "protocol",
            "init_declaration": METHOD,
            "deinit_declaration": METHOD,
            "subscript_declaration": METHOD,
        },
        containers=frozenset({"class_declaration", "protocol_declaration"}),
        leading=frozenset({"comment", "multiline_comment"}),
        need_body=frozenset({"function_declaration"}),
    ),
    "scala": Rules(
        defs={
            "function_definition": FUNCTION,
            "class_definition": CLASS,
            "object_definition": "object",
            "trait_definition": "trait",
            "enum_definition": "enum",
        },
        containers=frozenset(
            {"class_definition", "object_definition", "trait_definition", "enum_definition"}
        ),
        leading=frozenset({"comment", "block_comment"}),
    ),
    "bash": Rules(defs={"function_definition": FUNCTION}),
}

# Container kinds whose function members are methods (namespaces and modules keep functions).
METHOD_OWNERS = frozenset(
    {
        *(CLASS, "struct", "interface", "impl", "trait", "object", "protocol", "record"),
        *("enum", "extension", "actor"),
    }
)
# Kotlin/Swift share one node type for class/struct/enum/interface...: the keyword tells.
KIND_KEYWORDS = frozenset(
    {"class", "struct", "enum", "interface", "extension", "actor", "protocol", "object"}
)
BODY_TYPES = frozenset(
    {
        "class_body",
        "function_body",
        "enum_class_body",
        "protocol_body",
        "declaration_list",
        "field_declaration_list",
        "body_statement",
        "template_body",
        "block",
        "compound_statement",
        "statement_block",
    }
)
NAME_TYPES = frozenset(
    {
        "identifier",
        "type_identifier",
        "simple_identifier",
        "constant",
        "name",
        "word",
        "field_identifier",
        "property_identifier",
    }
)
DECLARATOR_NAMES = frozenset(
    {
        "identifier",
        "field_identifier",
        "qualified_identifier",
        "destructor_name",
        "operator_name",
        "type_identifier",
    }
)
FUNCTION_VALUES = frozenset(
    {"arrow_function", "function_expression", "function", "generator_function"}
)
