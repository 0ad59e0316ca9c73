/* Vectors in pgvector's halfvec binary format, a compiled twin of the struct path in
 * codebase_mcp.store.db (encode_half_python), which it must match byte for byte (a test
 * compares them on random and edge values).
 *
 * Why: an index job encodes every vector it stores in the job's own process; with struct
 * and its finiteness check that is ~12 us for 768 values (a tuple of 770 arguments, then
 * a generic conversion per value): ~0.9 s of a first index of the standard library
 * (75,000 vectors). Here it is one pass, ~2 us.
 *
 * Format (halfvec_recv): int16 dimensions, int16 unused (0), then each value as an IEEE
 * half, all big-endian. Each double is rounded to the nearest half, ties to even, as
 * struct's "e" does (directly from the double: no rounding through float first).
 *
 * Returns None when a value is not finite or rounds beyond +-65504 (the caller names the
 * model that made it); raises TypeError for an item that is not a number.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* pgvector's HALFVEC_MAX_DIM */
#define MAX_DIMENSIONS 16000

/* The half nearest to d (ties to even), or -1 when d is not finite or rounds past 65504. */
static int32_t half_bits(double d)
{
    uint64_t x;
    memcpy(&x, &d, sizeof x);
    uint32_t sign = (uint32_t)(x >> 48) & 0x8000u;
    uint64_t magnitude = x & 0x7fffffffffffffffULL;
    int exponent = (int)(magnitude >> 52) - 1023;
    uint64_t mantissa = (magnitude & 0xfffffffffffffULL) | (1ULL << 52); /* 53 bits */
    if (magnitude == 0)
        return (int32_t)sign;
    if (exponent > 15) /* >= 65536, infinity or NaN */
        return -1;
    if (exponent < -25) /* below half the smallest subnormal (2^-25): zero */
        return (int32_t)sign;
    /* Keep 11 bits for a normal half (10 stored and the implicit one); fewer for a
     * subnormal, whose unit is 2^-24. */
    int shift = exponent >= -14 ? 42 : 42 + (-14 - exponent);
    uint64_t kept = mantissa >> shift;
    uint64_t rest = mantissa & ((1ULL << shift) - 1);
    uint64_t halfway = 1ULL << (shift - 1);
    if (rest > halfway || (rest == halfway && (kept & 1)))
        kept++;
    uint32_t bits;
    if (exponent >= -14) {
        int biased = exponent + 15;
        if (kept == 2048) { /* rounded up to the next power of two */
            kept = 1024;
            biased++;
        }
        if (biased > 30)
            return -1;
        bits = ((uint32_t)biased << 10) | (uint32_t)(kept & 0x3ff);
    } else {
        bits = (uint32_t)kept; /* 1024 (rounded up to the smallest normal) sets exponent 1 */
    }
    return (int32_t)(sign | bits);
}

static PyObject *encode(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "a sequence of numbers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_DIMENSIONS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "a halfvec holds at most %d values", MAX_DIMENSIONS);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 + 2 * n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    p[0] = (unsigned char)(n >> 8);
    p[1] = (unsigned char)n;
    p[2] = p[3] = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        double d;
        if (PyFloat_CheckExact(items[i])) {
            d = PyFloat_AS_DOUBLE(items[i]);
        } else {
            d = PyFloat_AsDouble(items[i]);
            if (d == -1.0 && PyErr_Occurred()) {
                Py_DECREF(out);
                Py_DECREF(seq);
                return NULL;
            }
        }
        int32_t bits = half_bits(d);
        if (bits < 0) {
            Py_DECREF(out);
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        p[4 + 2 * i] = (unsigned char)(bits >> 8);
        p[5 + 2 * i] = (unsigned char)bits;
    }
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_O,
     "encode(values) -> bytes | None\n\n"
     "The values in pgvector's halfvec binary format, each rounded to the nearest half;\n"
     "None when one is not finite or rounds beyond +-65504."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "codebase_mcp._halfvec",
    "pgvector's halfvec binary format, compiled (see codebase_mcp.store.db).",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__halfvec(void)
{
    return PyModule_Create(&module);
}
