/* Reading JSON arrays of numbers into packed values, with no Python objects (so also without the GIL): the core
 * that workbench.serving._native's decoders and its front end share. See _native.c for the rules on numbers.
 */
#ifndef WORKBENCH_DECODE_H
#define WORKBENCH_DECODE_H
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32

typedef struct {
    const char *p;
    const char *end;
    char kind; /* what to write: 'f' float32, 'd' float64, 'q' int64 (integers only) */
    char *out;
    ptrdiff_t n;   /* values written */
    ptrdiff_t cap; /* values that fit in out */
    int leaf;       /* depth whose arrays hold the numbers; -1 until the first number */
    int x87;        /* long double division is exact to 64 bits: the quick way to most quotients */
    ptrdiff_t dims[MAX_DEPTH];
} Reader;

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static uint64_t POW10_INT[20]; /* 10^0 .. 10^19 */
static uint64_t POW5[28];      /* 5^0 .. 5^27, all below 2^64 */
static double POW2_NEG[28];    /* 2^0 .. 2^-27 */

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Eight ASCII digits at once (a little-endian load of 8 bytes): is every byte one, and their value. */
static inline int eight_digits(uint64_t v) {
    const uint64_t high = UINT64_C(0xF0F0F0F0F0F0F0F0);
    return ((v & high) | (((v + UINT64_C(0x0606060606060606)) & high) >> 4)) == UINT64_C(0x3333333333333333);
}

static inline uint64_t value_of_eight(uint64_t v) {
    v -= UINT64_C(0x3030303030303030);             /* each byte a digit 0..9, the first digit lowest */
    v = v * 10 + (v >> 8);                          /* each even byte: two digits' value, 0..99 */
    const uint64_t pairs = UINT64_C(0x000000FF000000FF);
    return (((v & pairs) * (100 + (UINT64_C(1000000) << 32))) + (((v >> 16) & pairs) * (1 + (UINT64_C(10000) << 32)))) >> 32;
}

static inline void skip_ws(Reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
}

static inline int bits128(unsigned __int128 x) {
    uint64_t hi = (uint64_t)(x >> 64);
    return hi ? 128 - __builtin_clzll(hi) : 64 - __builtin_clzll((uint64_t)x);
}

#if LDBL_MANT_DIG == 64
/* Whether long double arithmetic keeps 64 bits now (a process may have set the x87 unit to 53). */
static inline int x87_extended(void) {
    volatile long double one = 1.0L, tiny = 0x1p-63L;
    return one + tiny != one;
}
#endif

/* w * 10^e10 rounded to the nearest double (ties to even), w > 0; 0 where not handled. */
static inline int to_double(uint64_t w, int e10, int x87, double *out) {
    if (e10 == 0) { /* the hardware conversion rounds to nearest */
        *out = (double)w;
        return 1;
    }
    if (w <= (UINT64_C(1) << 53) && e10 >= -22 && e10 <= 22) {
        /* both operands are exact doubles, so one IEEE operation rounds once (Clinger's fast path) */
        *out = e10 > 0 ? (double)w * POW10[e10] : (double)w / POW10[-e10];
        return 1;
    }
    if (e10 > 0) {
        uint64_t product;
        if (e10 > 19 || __builtin_mul_overflow(w, POW10_INT[e10], &product))
            return 0;
        *out = (double)product;
        return 1;
    }
    if (e10 < -27)
        return 0;
    int k = -e10; /* w / 10^k = (w / 5^k) * 2^-k, and 5^k < 2^63 */
#if LDBL_MANT_DIG == 64
    if (x87) {
        /* x87's 64-bit quotient, rounded once, then to 53 bits: right unless it fell on a 53-bit midpoint,
           where the exact quotient may lie on either side of it (the long way below settles those) */
        long double x = (long double)w / (long double)POW5[k];
        uint64_t m64; /* x87's explicit 64-bit significand is the first 8 bytes */
        memcpy(&m64, &x, sizeof m64);
        if ((m64 & 0x7ff) != 0x400) {
            *out = (double)x * POW2_NEG[k]; /* exact: a power of two, far from subnormal */
            return 1;
        }
    }
#endif
    /* (w * 2^s / 5^k) * 2^-(s+k): an exact integer quotient of 64+ bits and a sticky remainder */
    int s = 127 - (64 - __builtin_clzll(w));
    unsigned __int128 n = (unsigned __int128)w << s;
    unsigned __int128 q = n / POW5[k];
    int sticky = n - q * POW5[k] != 0;
    int shift = bits128(q) - 53;
    uint64_t mant = (uint64_t)(q >> shift);
    unsigned __int128 rest = q & (((unsigned __int128)1 << shift) - 1);
    unsigned __int128 half = (unsigned __int128)1 << (shift - 1);
    if (rest > half || (rest == half && (sticky || (mant & 1))))
        mant++;
    *out = ldexp((double)mant, shift - s - k);
    return 1;
}

static inline int read_number(Reader *r) {
    const char *p = r->p, *end = r->end;
    int neg = 0, digits = 0, e10 = 0, fractional = 0;
    uint64_t w = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end)
        return 0;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p))
            return 0; /* a leading zero: not JSON */
    } else if (is_digit(*p)) {
        while (p < end && is_digit(*p)) {
            if (digits == 19)
                return 0;
            w = w * 10 + (uint64_t)(*p++ - '0');
            digits++;
        }
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        fractional = 1;
        p++;
        if (p >= end || !is_digit(*p))
            return 0;
        if (w == 0) { /* leading zeros carry no digits */
            while (p < end && *p == '0') {
                p++;
                e10--;
            }
        }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t chunk;
        while (digits <= 11 && end - p >= 8 && (memcpy(&chunk, p, 8), eight_digits(chunk))) {
            w = w * 100000000 + value_of_eight(chunk);
            digits += 8;
            e10 -= 8;
            p += 8;
        }
#endif
        while (p < end && is_digit(*p)) {
            if (digits == 19)
                return 0;
            w = w * 10 + (uint64_t)(*p++ - '0');
            digits++;
            e10--;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        fractional = 1;
        p++;
        int eneg = 0, e = 0;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= end || !is_digit(*p))
            return 0;
        while (p < end && is_digit(*p)) {
            if (e < 100000)
                e = e * 10 + (*p - '0');
            p++;
        }
        e10 += eneg ? -e : e;
    }
    if (r->n >= r->cap)
        return 0;
    if (r->kind == 'q') { /* a fraction or an exponent makes a float: the general path rejects it for an int input */
        if (fractional || w > (uint64_t)INT64_MAX + (uint64_t)neg)
            return 0;
        ((int64_t *)r->out)[r->n++] = neg ? (int64_t)(0 - w) : (int64_t)w;
        r->p = p;
        return 1;
    }
    double value = 0.0;
    if (w != 0) {
        if (!fractional && w > (UINT64_C(1) << 53))
            return 0; /* the general path casts such integers to float32 in one rounding, not two */
        if (!to_double(w, e10, r->x87, &value))
            return 0;
    } else if (!fractional) {
        neg = 0; /* the integer -0 is 0; only -0.0 is negative zero */
    }
    if (neg)
        value = -value;
    if (r->kind == 'f') {
        if (fabs(value) > FLT_MAX)
            return 0; /* an overflow: the general path reports it */
        ((float *)r->out)[r->n++] = (float)value;
    } else {
        ((double *)r->out)[r->n++] = value;
    }
    r->p = p;
    return 1;
}

/* An array at ``depth`` whose '[' was just read; every array at one depth must have the first one's length. */
static inline int read_array(Reader *r, int depth) {
    ptrdiff_t count = 0;
    skip_ws(r);
    if (r->p < r->end && *r->p == ']')
        return 0; /* empty: its shape is not known from here */
    for (;;) {
        skip_ws(r);
        if (r->p >= r->end)
            return 0;
        if (*r->p == '[') {
            if ((r->leaf >= 0 && r->leaf <= depth) || depth + 1 >= MAX_DEPTH)
                return 0;
            r->p++;
            if (!read_array(r, depth + 1))
                return 0;
        } else {
            if (r->leaf < 0)
                r->leaf = depth;
            else if (r->leaf != depth)
                return 0;
            if (!read_number(r))
                return 0;
        }
        count++;
        skip_ws(r);
        if (r->p >= r->end)
            return 0;
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == ']') {
            r->p++;
            break;
        }
        return 0;
    }
    if (r->dims[depth] < 0)
        r->dims[depth] = count;
    else if (r->dims[depth] != count)
        return 0;
    return 1;
}

static inline int expect(Reader *r, const char *text, ptrdiff_t len) {
    if (r->end - r->p < len || memcmp(r->p, text, (size_t)len) != 0)
        return 0;
    r->p += len;
    return 1;
}

/* A string with no escapes or control characters; *start and *len its text. */
static inline int read_plain_string(Reader *r, const char **start, ptrdiff_t *len) {
    if (!expect(r, "\"", 1))
        return 0;
    const char *s = r->p;
    while (r->p < r->end && *r->p != '"') {
        if (*r->p == '\\' || (unsigned char)*r->p < 0x20)
            return 0;
        r->p++;
    }
    if (r->p >= r->end)
        return 0;
    *start = s;
    *len = r->p - s;
    r->p++;
    return 1;
}

static inline int is_key(const char *s, ptrdiff_t len, const char *key) {
    return (size_t)len == strlen(key) && memcmp(s, key, (size_t)len) == 0;
}

/* The '{' that opens an object, and the whitespace around it; 0: not one. */
static inline int open_object(Reader *r) {
    skip_ws(r);
    if (!expect(r, "{", 1))
        return 0;
    skip_ws(r);
    return 1;
}

/* An object member's key and the ':' after it; 0: not one. */
static inline int read_key(Reader *r, const char **key, ptrdiff_t *len) {
    if (!read_plain_string(r, key, len))
        return 0;
    skip_ws(r);
    if (!expect(r, ":", 1))
        return 0;
    skip_ws(r);
    return 1;
}

/* After one member of an object: 1 and the next member follows, 0 and the object ended, -1: neither. */
static inline int next_member(Reader *r) {
    skip_ws(r);
    if (expect(r, ",", 1)) {
        skip_ws(r);
        return 1;
    }
    return expect(r, "}", 1) ? 0 : -1;
}

/* Fills the tables above; once per translation unit that includes this file, before any reading. */
static inline void decode_init(void) {
    POW10_INT[0] = 1;
    for (int i = 1; i < 20; i++)
        POW10_INT[i] = POW10_INT[i - 1] * 10;
    POW5[0] = 1;
    POW2_NEG[0] = 1.0;
    for (int i = 1; i < 28; i++) {
        POW5[i] = POW5[i - 1] * 5;
        POW2_NEG[i] = POW2_NEG[i - 1] / 2;
    }
}

#endif
