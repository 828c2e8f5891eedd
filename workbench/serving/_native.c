/* The model server's native predict-body decoder (workbench.serving._native).
 *
 * decode(body, kind) reads the TF Serving body clients send most,
 * {"instances": <nested numbers>} or {"inputs": <nested numbers>} (with or
 * without "signature_name"), straight into packed float32 (kind 'f'),
 * float64 ('d') or int64 ('q': integers only, for int inputs) values, and
 * returns (key, bytearray, shape, signature_name);
 * or None for anything else: other keys, strings, a ragged or empty array, a
 * number it cannot convert exactly as below. The caller then takes its
 * general path, which also words the error, so this decoder never rejects a
 * request and never changes what is accepted. decode_v2(body) does the same
 * for KServe V2 infer bodies.
 *
 * Numbers: each is converted to the double nearest its decimal value (as
 * orjson, simdjson and strtod do), then to float32 when asked, the same two
 * roundings numpy's astype applies on the general path, so both paths give
 * the same bits. Exactly, and without strtod's cost, for up to 19 significant
 * digits and a decimal exponent from -27 up to what fits 64 bits; anything
 * beyond that returns None.
 *
 * Why in C: in Python (simdjson, then numpy) this step cost ~55 us per 28x28
 * image, about 40% of the server's event loop under load.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_decode.h"

/* The numeric array at r->p as (bytearray, shape) in *out, r->p moved past it. 1: done; 0: not such an array
   (nothing set); -1: a Python error. */
static int read_tensor(Reader *r, char kind, PyObject **out) {
    Reader t = {.p = r->p, .end = r->end, .kind = kind, .leaf = -1, .x87 = r->x87};
    Py_ssize_t itemsize = kind == 'f' ? 4 : 8;
    if (!expect(&t, "[", 1))
        return 0;
    t.cap = (t.end - t.p) / 2 + 1; /* a number takes a character, and a separator follows all but the last */
    for (int i = 0; i < MAX_DEPTH; i++)
        t.dims[i] = -1;
    PyObject *data = PyByteArray_FromStringAndSize(NULL, t.cap * itemsize);
    if (data == NULL)
        return -1;
    t.out = PyByteArray_AS_STRING(data);
    if (!read_array(&t, 0)) {
        Py_DECREF(data);
        return 0;
    }
    PyObject *shape = PyTuple_New(t.leaf + 1);
    if (shape == NULL || PyByteArray_Resize(data, t.n * itemsize) < 0) {
        Py_XDECREF(shape);
        Py_DECREF(data);
        return -1;
    }
    for (int i = 0; i <= t.leaf; i++)
        PyTuple_SET_ITEM(shape, i, PyLong_FromSsize_t(t.dims[i]));
    *out = Py_BuildValue("(NN)", data, shape);
    r->p = t.p;
    return *out == NULL ? -1 : 1;
}

static Reader reader(Py_buffer *body) {
    Reader r = {.p = body->buf, .end = (const char *)body->buf + body->len, .leaf = -1};
#if LDBL_MANT_DIG == 64
    r.x87 = x87_extended();
#endif
    return r;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer body;
    char kind;
    if (!PyArg_ParseTuple(args, "y*C:decode", &body, &kind))
        return NULL;
    if (kind != 'f' && kind != 'd' && kind != 'q') {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_ValueError, "kind must be 'f' (float32), 'd' (float64) or 'q' (int64)");
        return NULL;
    }
    Reader r = reader(&body);
    const char *tensor_key = NULL, *key, *signature = NULL;
    Py_ssize_t key_len, signature_len = 0;
    PyObject *tensor = NULL, *result = NULL;
    int got = 0;
    if (!open_object(&r))
        goto done;
    for (;;) {
        if (!read_key(&r, &key, &key_len))
            goto done;
        if ((is_key(key, key_len, "instances") || is_key(key, key_len, "inputs")) && tensor == NULL) {
            tensor_key = is_key(key, key_len, "instances") ? "instances" : "inputs";
            if ((got = read_tensor(&r, kind, &tensor)) <= 0)
                goto done;
        } else if (is_key(key, key_len, "signature_name") && signature == NULL) {
            if (!read_plain_string(&r, &signature, &signature_len))
                goto done;
        } else {
            goto done; /* another key, or one given twice: the Python paths */
        }
        int more = next_member(&r);
        if (more < 0)
            goto done;
        if (!more)
            break;
    }
    skip_ws(&r);
    if (r.p == r.end && tensor != NULL) {
        result = Py_BuildValue("(sOOs#)", tensor_key, PyTuple_GET_ITEM(tensor, 0), PyTuple_GET_ITEM(tensor, 1),
                               signature, signature_len);
        if (result == NULL && got > 0 && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear(); /* a signature name that is not UTF-8: the general path words it */
        else if (result == NULL)
            got = -1;
    }
done:
    PyBuffer_Release(&body);
    Py_XDECREF(tensor);
    if (got < 0)
        return NULL;
    return result != NULL ? result : Py_NewRef(Py_None);
}

/* The list of dimensions at r->p ("[1, 28, 28]") in *out. 1: done; 0: not one; -1: a Python error. */
static int read_dims(Reader *r, PyObject **out) {
    if (!expect(r, "[", 1))
        return 0;
    PyObject *dims = PyList_New(0);
    if (dims == NULL)
        return -1;
    skip_ws(r);
    if (expect(r, "]", 1)) {
        *out = dims;
        return 1;
    }
    for (;;) {
        long long dim = 0;
        int digits = 0;
        while (r->p < r->end && is_digit(*r->p) && digits < 18) {
            dim = dim * 10 + (*r->p++ - '0');
            digits++;
        }
        if (digits == 0 || (r->p < r->end && is_digit(*r->p)) || (digits > 1 && r->p[-digits] == '0'))
            break; /* not a dimension (a sign, a leading zero, too long...) */
        PyObject *d = PyLong_FromLongLong(dim);
        if (d == NULL || PyList_Append(dims, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(dims);
            return -1;
        }
        Py_DECREF(d);
        skip_ws(r);
        if (expect(r, "]", 1)) {
            *out = dims;
            return 1;
        }
        if (!expect(r, ",", 1))
            break;
        skip_ws(r);
    }
    Py_DECREF(dims);
    return 0;
}

/* One V2 input tensor object, {"name", "shape", "datatype", "data"} in any order, as
   (name, datatype, shape, bytearray of float64). 1: done; 0: anything else; -1: a Python error. */
static int read_v2_tensor(Reader *r, PyObject **out) {
    const char *name = NULL, *datatype = NULL, *key;
    Py_ssize_t name_len = 0, datatype_len = 0, key_len;
    PyObject *shape = NULL, *data = NULL;
    int ok = 0;
    if (!open_object(r))
        return 0;
    for (;;) {
        if (!read_key(r, &key, &key_len))
            goto done;
        int got = 1;
        if (is_key(key, key_len, "name") && name == NULL)
            got = read_plain_string(r, &name, &name_len);
        else if (is_key(key, key_len, "datatype") && datatype == NULL)
            got = read_plain_string(r, &datatype, &datatype_len);
        else if (is_key(key, key_len, "shape") && shape == NULL)
            got = read_dims(r, &shape);
        else if (is_key(key, key_len, "data") && data == NULL)
            got = read_tensor(r, 'd', &data);
        else
            got = 0; /* another key ("parameters"...), or one given twice: the general path */
        if (got <= 0) {
            ok = got;
            goto done;
        }
        int more = next_member(r);
        if (more < 0)
            goto done;
        if (!more)
            break;
    }
    if (name == NULL || datatype == NULL || shape == NULL || data == NULL)
        goto done;
    *out = Py_BuildValue("(s#s#OO)", name, name_len, datatype, datatype_len, shape, PyTuple_GET_ITEM(data, 0));
    if (*out == NULL)
        PyErr_Clear(); /* a name that is not UTF-8: the general path words it */
    ok = *out != NULL;
done:
    Py_XDECREF(shape);
    Py_XDECREF(data);
    return ok;
}

static PyObject *decode_v2(PyObject *self, PyObject *args) {
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "y*:decode_v2", &body))
        return NULL;
    Reader r = reader(&body);
    PyObject *inputs = NULL, *id = NULL, *result = NULL;
    const char *key;
    Py_ssize_t key_len;
    int failed = 0; /* a Python error, not just a body for the general path */
    if (!open_object(&r))
        goto done;
    for (;;) {
        if (!read_key(&r, &key, &key_len))
            goto done;
        if (is_key(key, key_len, "inputs") && inputs == NULL) {
            if (!expect(&r, "[", 1) || (inputs = PyList_New(0)) == NULL)
                goto done;
            for (;;) {
                PyObject *tensor = NULL;
                int got = read_v2_tensor(&r, &tensor);
                if (got <= 0) {
                    failed = got < 0;
                    goto done;
                }
                int appended = PyList_Append(inputs, tensor);
                Py_DECREF(tensor);
                if (appended < 0) {
                    failed = 1;
                    goto done;
                }
                skip_ws(&r);
                if (expect(&r, "]", 1))
                    break;
                if (!expect(&r, ",", 1))
                    goto done;
            }
        } else if (is_key(key, key_len, "id") && id == NULL) {
            const char *text;
            Py_ssize_t len;
            if (!read_plain_string(&r, &text, &len))
                goto done;
            if ((id = PyUnicode_DecodeUTF8(text, len, NULL)) == NULL) {
                PyErr_Clear();
                goto done;
            }
        } else {
            goto done; /* "outputs", "parameters", a key twice...: the general path */
        }
        int more = next_member(&r);
        if (more < 0)
            goto done;
        if (!more)
            break;
    }
    skip_ws(&r);
    if (r.p == r.end && inputs != NULL)
        result = Py_BuildValue("(OO)", id ? id : Py_None, inputs);
done:
    PyBuffer_Release(&body);
    Py_XDECREF(inputs);
    Py_XDECREF(id);
    if (failed)
        return NULL;
    if (result == NULL) {
        PyErr_Clear();
        result = Py_NewRef(Py_None);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(body, kind) -> (key, bytearray, shape, signature_name) | None: a {\"instances\"|\"inputs\": "
     "numbers} body (and an optional plain-string \"signature_name\", else None) as packed float32 (kind 'f'), "
     "float64 ('d') or int64 ('q', integers only); None for any other body."},
    {"decode_v2", decode_v2, METH_VARARGS,
     "decode_v2(body) -> (id, [(name, datatype, shape, bytearray), ...]) | None: a KServe V2 infer "
     "body of \"inputs\" (numeric \"data\" as packed float64) and an optional string \"id\"; None for any other."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "The model server's native predict-body decoder and front end.",
                                    -1, methods};

int frontend_add_to(PyObject *module); /* _frontend.c */
int loadgen_add_to(PyObject *module);  /* _loadgen.c */

PyMODINIT_FUNC PyInit__native(void) {
    decode_init();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (frontend_add_to(m) < 0 || loadgen_add_to(m) < 0))
        Py_CLEAR(m);
    return m;
}
