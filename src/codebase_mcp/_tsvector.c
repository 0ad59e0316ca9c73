/* A chunk's search vectors, a compiled twin of codebase_mcp.source.tokens.chunk_vectors_python,
 * which it must match byte for byte (a test compares them on the standard library and on
 * generated text): its tsvector in PostgreSQL's binary wire format, its term-frequency
 * sparsevec in pgvector's, the length of its body in words, and its distinct words.
 *
 * Building these was the largest cost of indexing left in Python: one dict look-up and one
 * list append per word. Here it is one scan that hashes each word into its lexeme, a sort
 * of the distinct lexemes, and a copy: ~6x faster. ASCII text only: a section with any
 * other character returns None, and the caller takes the Python path (Unicode word rules).
 *
 * What it computes (see source/tokens.py for why):
 *   - identifiers are runs of [A-Za-z0-9_]; every other character separates them;
 *   - an identifier longer than 64 characters is data and yields no word;
 *   - its parts are what the regex [A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+ finds, lower-cased;
 *     with two parts or more, the words are the compound (the parts joined) then the
 *     parts, else the one part;
 *   - words are numbered 1, 2, ... across the sections in order, none past 16383; a
 *     position carries its section's weight in its top two bits;
 *   - tsvector: lexemes in byte order, each with its first 256 positions in ascending order;
 *   - sparsevec: per (lexeme, weight) the number of its positions (all of them), at
 *     dimension FNV-1a(lexeme bytes, then a NUL and the weight byte unless the weight is 0)
 *     modulo 10^9; at most 16,000 entries (the most frequent).
 *
 * Binary formats: tsvectorrecv reads an int32 lexeme count, then per lexeme its bytes, a
 * NUL, uint16 position count and that many uint16 positions; sparsevec_recv an int32
 * dimension count, int32 entry count, int32 0, the int32 indices, then the float4 values;
 * all big-endian.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_POSITION 16383
#define MAX_POSITIONS_PER_WORD 256
#define MAX_IDENTIFIER 64
#define SPARSE_DIMENSIONS 1000000000u
#define SPARSE_MAX_NNZ 16000

typedef struct {
    uint32_t offset; /* of its bytes in the arena */
    uint32_t hash;
    uint16_t length; /* <= MAX_IDENTIFIER */
    uint16_t count;   /* positions kept: the first MAX_POSITIONS_PER_WORD */
    uint16_t written; /* of those, already in the result */
} Lexeme;

typedef struct {
    uint16_t lexeme;   /* index into lexemes */
    uint16_t position; /* weight << 14 | position */
} Occurrence;

typedef struct {
    Occurrence *occurrences; /* MAX_POSITION of them: every word takes a position */
    Py_ssize_t count;
    Lexeme *lexemes;
    Py_ssize_t lexeme_count, lexeme_capacity;
    uint16_t *table; /* open addressing: lexeme index + 1, 0 for empty */
    size_t table_size; /* a power of two, at least twice the lexemes */
    char *arena;
    size_t arena_used, arena_size;
} State;

static inline int is_upper(Py_UCS4 c) { return c >= 'A' && c <= 'Z'; }
static inline int is_lower(Py_UCS4 c) { return c >= 'a' && c <= 'z'; }
static inline int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static inline int is_identifier(Py_UCS4 c) {
    return is_upper(c) || is_lower(c) || is_digit(c) || c == '_';
}

static uint32_t hash_word(const char *word, size_t length) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < length; i++) {
        h = (h ^ (unsigned char)word[i]) * 16777619u;
    }
    return h;
}

static int grow_table(State *st) {
    size_t size = st->table_size * 2;
    uint16_t *table = PyMem_Calloc(size, sizeof(uint16_t));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < st->lexeme_count; i++) {
        size_t slot = st->lexemes[i].hash & (size - 1);
        while (table[slot] != 0) slot = (slot + 1) & (size - 1);
        table[slot] = (uint16_t)(i + 1);
    }
    PyMem_Free(st->table);
    st->table = table;
    st->table_size = size;
    return 0;
}

/* The index of this word's lexeme, added if new; -1: out of memory. */
static Py_ssize_t find_or_add_lexeme(State *st, const char *word, size_t length) {
    uint32_t h = hash_word(word, length);
    size_t mask = st->table_size - 1;
    size_t slot = h & mask;
    for (;;) {
        uint16_t found = st->table[slot];
        if (found == 0) break;
        Lexeme *lx = &st->lexemes[found - 1];
        if (lx->hash == h && lx->length == length &&
            memcmp(st->arena + lx->offset, word, length) == 0) {
            return found - 1;
        }
        slot = (slot + 1) & mask;
    }
    if (st->lexeme_count == st->lexeme_capacity) {
        Py_ssize_t capacity = st->lexeme_capacity * 2;
        Lexeme *grown = PyMem_Realloc(st->lexemes, sizeof(Lexeme) * (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        st->lexemes = grown;
        st->lexeme_capacity = capacity;
    }
    if (st->arena_used + length > st->arena_size) {
        size_t size = st->arena_size * 2;
        while (size < st->arena_used + length) size *= 2;
        char *grown = PyMem_Realloc(st->arena, size);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        st->arena = grown;
        st->arena_size = size;
    }
    memcpy(st->arena + st->arena_used, word, length);
    Py_ssize_t index = st->lexeme_count++;
    Lexeme *lx = &st->lexemes[index];
    lx->offset = (uint32_t)st->arena_used;
    lx->hash = h;
    lx->length = (uint16_t)length;
    lx->count = 0;
    lx->written = 0;
    st->arena_used += length;
    st->table[slot] = (uint16_t)(index + 1);
    if ((size_t)st->lexeme_count * 2 > st->table_size && grow_table(st) < 0) {
        return -1;
    }
    return index;
}

/* Adds one word (lower-cased ASCII) at the next position. 0: added, 1: positions are
 * used up, -1: out of memory. */
static int add_word(State *st, const char *word, size_t length, int weight) {
    if (st->count >= MAX_POSITION) {
        return 1;
    }
    Py_ssize_t lexeme = find_or_add_lexeme(st, word, length);
    if (lexeme < 0) {
        return -1;
    }
    st->count++; /* positions are 1-based */
    Occurrence *o = &st->occurrences[st->count - 1];
    o->lexeme = (uint16_t)lexeme;
    o->position = (uint16_t)((weight << 14) | st->count);
    if (st->lexemes[lexeme].count < MAX_POSITIONS_PER_WORD) {
        st->lexemes[lexeme].count++;
    }
    return 0;
}

/* The words of one identifier (ASCII, 1..MAX_IDENTIFIER characters). */
static int add_identifier(State *st, const char *id, size_t length, int weight) {
    size_t starts[MAX_IDENTIFIER], ends[MAX_IDENTIFIER];
    size_t parts = 0;
    char compound[MAX_IDENTIFIER];
    size_t compound_length = 0;
    size_t k = 0;
    while (k < length) {
        char c = id[k];
        size_t e = k;
        if (is_upper(c) && k + 1 < length && is_lower(id[k + 1])) {
            e = k + 1; /* [A-Z][a-z]+ */
            while (e < length && is_lower(id[e])) e++;
        } else if (is_lower(c)) {
            while (e < length && is_lower(id[e])) e++; /* [a-z]+ */
        } else if (is_upper(c)) {
            /* [A-Z]+(?![a-z]): a run followed by a lower-case letter gives that letter's
             * capital back (HTTPServer -> HTTP, Server); such a run has two or more. */
            while (e < length && is_upper(id[e])) e++;
            if (e < length && is_lower(id[e])) e--;
        } else if (is_digit(c)) {
            while (e < length && is_digit(id[e])) e++; /* [0-9]+ */
        } else {
            k++; /* '_' separates parts */
            continue;
        }
        starts[parts] = compound_length;
        for (size_t i = k; i < e; i++) {
            char ch = id[i];
            compound[compound_length++] = is_upper(ch) ? (char)(ch - 'A' + 'a') : ch;
        }
        ends[parts] = compound_length;
        parts++;
        k = e;
    }
    if (parts == 0) {
        return 0;
    }
    int status = add_word(st, compound, compound_length, weight);
    if (parts == 1 || status != 0) {
        return status;
    }
    for (size_t p = 0; p < parts; p++) {
        status = add_word(st, compound + starts[p], ends[p] - starts[p], weight);
        if (status != 0) {
            return status;
        }
    }
    return 0;
}

static int add_section(State *st, PyObject *text, int weight) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    char identifier[MAX_IDENTIFIER];
    Py_ssize_t i = 0;
    while (i < n) {
        if (!is_identifier(PyUnicode_READ(kind, data, i))) {
            i++;
            continue;
        }
        Py_ssize_t j = i;
        Py_UCS4 c;
        while (j < n && is_identifier(c = PyUnicode_READ(kind, data, j))) {
            if (j - i < MAX_IDENTIFIER) {
                identifier[j - i] = (char)c;
            }
            j++;
        }
        if (j - i <= MAX_IDENTIFIER) {
            int status = add_identifier(st, identifier, (size_t)(j - i), weight);
            if (status != 0) {
                return status;
            }
        }
        i = j;
    }
    return 0;
}

static const Lexeme *sort_lexemes;
static const char *sort_arena;

static int compare_lexemes(const void *left, const void *right) {
    const Lexeme *a = &sort_lexemes[*(const uint16_t *)left];
    const Lexeme *b = &sort_lexemes[*(const uint16_t *)right];
    size_t common = a->length < b->length ? a->length : b->length;
    int order = memcmp(sort_arena + a->offset, sort_arena + b->offset, common);
    if (order != 0) return order;
    return (int)a->length - (int)b->length;
}

static inline char *put_u16(char *out, unsigned value) {
    out[0] = (char)((value >> 8) & 0xff);
    out[1] = (char)(value & 0xff);
    return out + 2;
}

/* The tsvector's bytes; *lexemes_out gets its lexemes, in the same (byte) order, as str. */
static PyObject *encode(State *st, PyObject **lexemes_out) {
    Py_ssize_t n = st->lexeme_count;
    uint16_t *order = PyMem_Malloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    /* where each lexeme's next position goes in the result */
    Py_ssize_t *cursor = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    PyObject *result = NULL;
    if (order == NULL || cursor == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t size = 4;
    for (Py_ssize_t i = 0; i < n; i++) {
        order[i] = (uint16_t)i;
        size += st->lexemes[i].length + 1 + 2 + 2 * st->lexemes[i].count;
    }
    /* Sorting runs with the GIL held: the comparison's globals are not shared. */
    sort_lexemes = st->lexemes;
    sort_arena = st->arena;
    qsort(order, (size_t)n, sizeof(uint16_t), compare_lexemes);

    PyObject *lexemes = PyTuple_New(n);
    if (lexemes == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const Lexeme *lx = &st->lexemes[order[i]];
        PyObject *word = PyUnicode_DecodeASCII(st->arena + lx->offset, lx->length, NULL);
        if (word == NULL) {
            Py_DECREF(lexemes);
            goto done;
        }
        PyTuple_SET_ITEM(lexemes, i, word);
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) {
        Py_DECREF(lexemes);
        goto done;
    }
    *lexemes_out = lexemes;
    char *start = PyBytes_AS_STRING(result);
    char *out = start;
    *out++ = (char)((n >> 24) & 0xff);
    *out++ = (char)((n >> 16) & 0xff);
    out = put_u16(out, (unsigned)(n & 0xffff));
    for (Py_ssize_t i = 0; i < n; i++) {
        const Lexeme *lx = &st->lexemes[order[i]];
        memcpy(out, st->arena + lx->offset, lx->length);
        out += lx->length;
        *out++ = '\0';
        out = put_u16(out, lx->count);
        cursor[order[i]] = out - start;
        out += 2 * lx->count;
    }
    /* Occurrences are in position order: a lexeme's first `count` are the ones kept. */
    for (Py_ssize_t i = 0; i < st->count; i++) {
        const Occurrence *o = &st->occurrences[i];
        Lexeme *lx = &st->lexemes[o->lexeme];
        if (lx->written < lx->count) {
            put_u16(start + cursor[o->lexeme] + 2 * lx->written, o->position);
            lx->written++;
        }
    }
done:
    PyMem_Free(order);
    PyMem_Free(cursor);
    return result;
}

typedef struct {
    uint32_t dim;
    uint32_t count;
} Term;

static int compare_terms_by_dim(const void *left, const void *right) {
    const Term *a = left, *b = right;
    return (a->dim > b->dim) - (a->dim < b->dim);
}

static int compare_terms_by_count(const void *left, const void *right) {
    const Term *a = left, *b = right;
    if (a->count != b->count) return (a->count < b->count) - (a->count > b->count);
    return (a->dim > b->dim) - (a->dim < b->dim);
}

static inline char *put_u32(char *out, uint32_t value) {
    out[0] = (char)((value >> 24) & 0xff);
    out[1] = (char)((value >> 16) & 0xff);
    out[2] = (char)((value >> 8) & 0xff);
    out[3] = (char)(value & 0xff);
    return out + 4;
}

/* The term-frequency sparsevec (tokens._sparse_bytes): one entry per (lexeme, weight)
 * with that many occurrences, at dimension fnv1a(lexeme [, NUL, weight]) % 10^9, in
 * dimension order, equal dimensions merged; *body gets the body's (weight D) length. */
static PyObject *encode_sparse(State *st, long *body) {
    Py_ssize_t n = st->lexeme_count;
    uint32_t *per_weight = PyMem_Calloc((size_t)(n ? n : 1) * 4, sizeof(uint32_t));
    Term *terms = PyMem_Malloc(sizeof(Term) * (size_t)(n ? n : 1) * 4);
    PyObject *result = NULL;
    if (per_weight == NULL || terms == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    *body = 0;
    for (Py_ssize_t i = 0; i < st->count; i++) {
        const Occurrence *o = &st->occurrences[i];
        int weight = o->position >> 14;
        per_weight[(size_t)o->lexeme * 4 + (size_t)weight]++;
        if (weight == 0) (*body)++;
    }
    Py_ssize_t nnz = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Lexeme *lx = &st->lexemes[i];
        for (int weight = 0; weight < 4; weight++) {
            uint32_t count = per_weight[(size_t)i * 4 + (size_t)weight];
            if (count == 0) continue;
            uint32_t h = lx->hash;
            if (weight != 0) {
                h = (h ^ 0u) * 16777619u;
                h = (h ^ (uint32_t)weight) * 16777619u;
            }
            terms[nnz].dim = h % SPARSE_DIMENSIONS;
            terms[nnz].count = count;
            nnz++;
        }
    }
    qsort(terms, (size_t)nnz, sizeof(Term), compare_terms_by_dim);
    Py_ssize_t merged = 0;
    for (Py_ssize_t i = 0; i < nnz; i++) {
        if (merged > 0 && terms[merged - 1].dim == terms[i].dim) {
            terms[merged - 1].count += terms[i].count;
        } else {
            terms[merged++] = terms[i];
        }
    }
    nnz = merged;
    if (nnz > SPARSE_MAX_NNZ) { /* the most frequent, then the lower dimensions */
        qsort(terms, (size_t)nnz, sizeof(Term), compare_terms_by_count);
        nnz = SPARSE_MAX_NNZ;
        qsort(terms, (size_t)nnz, sizeof(Term), compare_terms_by_dim);
    }
    result = PyBytes_FromStringAndSize(NULL, 12 + 8 * nnz);
    if (result == NULL) goto done;
    char *out = PyBytes_AS_STRING(result);
    out = put_u32(out, SPARSE_DIMENSIONS);
    out = put_u32(out, (uint32_t)nnz);
    out = put_u32(out, 0);
    for (Py_ssize_t i = 0; i < nnz; i++) out = put_u32(out, terms[i].dim);
    for (Py_ssize_t i = 0; i < nnz; i++) {
        float value = (float)terms[i].count;
        uint32_t bits;
        memcpy(&bits, &value, sizeof bits);
        out = put_u32(out, bits);
    }
done:
    PyMem_Free(per_weight);
    PyMem_Free(terms);
    return result;
}

static PyObject *chunk_vectors(PyObject *module, PyObject *sections) {
    (void)module;
    PyObject *seq = PySequence_Fast(sections, "sections must be a sequence of (text, weight)");
    if (seq == NULL) {
        return NULL;
    }
    State st = {0};
    PyObject *result = NULL;
    int ascii = 1;
    st.occurrences = PyMem_Malloc(sizeof(Occurrence) * MAX_POSITION);
    st.lexeme_capacity = 256;
    st.lexemes = PyMem_Malloc(sizeof(Lexeme) * (size_t)st.lexeme_capacity);
    st.table_size = 1024;
    st.table = PyMem_Calloc(st.table_size, sizeof(uint16_t));
    st.arena_size = 4096;
    st.arena = PyMem_Malloc(st.arena_size);
    if (st.occurrences == NULL || st.lexemes == NULL || st.table == NULL || st.arena == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    /* Check every section first: a bad one is an error even after a full one. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long weight;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "each section must be a (text, weight) tuple");
            goto done;
        }
        PyObject *text = PyTuple_GET_ITEM(item, 0);
        if (!PyUnicode_Check(text)) {
            PyErr_SetString(PyExc_TypeError, "a section's text must be a str");
            goto done;
        }
        weight = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        if (weight == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (weight < 0 || weight > 3) {
            PyErr_Format(PyExc_ValueError, "a section's weight must be 0..3, got %ld", weight);
            goto done;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(text) < 0) {
            goto done;
        }
#endif
        if (!PyUnicode_IS_ASCII(text)) ascii = 0;
    }
    if (!ascii) { /* Unicode word rules live in Python (tokens.chunk_vectors_python) */
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int status = add_section(&st, PyTuple_GET_ITEM(item, 0),
                                 (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 1)));
        if (status < 0) {
            goto done;
        }
        if (status > 0) {
            break; /* every position is taken: later sections add nothing */
        }
    }
    long body = 0;
    PyObject *sparse = encode_sparse(&st, &body);
    if (sparse == NULL) goto done;
    PyObject *lexemes = NULL;
    PyObject *tsvector = encode(&st, &lexemes);
    if (tsvector == NULL) {
        Py_DECREF(sparse);
        goto done;
    }
    result = Py_BuildValue("(NNlN)", tsvector, sparse, body, lexemes);
done:
    PyMem_Free(st.occurrences);
    PyMem_Free(st.lexemes);
    PyMem_Free(st.table);
    PyMem_Free(st.arena);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"chunk_vectors", chunk_vectors, METH_O,
     "chunk_vectors(sections) -> (tsvector, sparsevec, body_length, lexemes) | None\n\n"
     "The tsvector and the term-frequency sparsevec of (text, weight) sections in\n"
     "PostgreSQL's and pgvector's binary formats, the body's length in words, and the\n"
     "distinct words in byte order; the same as codebase_mcp.source.tokens.chunk_vectors_python.\n"
     "None when a section is not ASCII (the Unicode word rules are Python's)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "codebase_mcp._tsvector",
    "Compiled tsvector building for the indexer (see codebase_mcp.source.tokens).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__tsvector(void) { return PyModule_Create(&module); }
