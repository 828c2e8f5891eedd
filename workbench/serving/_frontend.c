/* The model server's native front end (workbench.serving._native.Frontend): the predict path outside the GIL.
 *
 * One thread accepts on the server's listening socket and owns every connection it accepts (epoll, edge
 * triggered). It parses each HTTP/1.1 request itself and serves the one kind of request that makes up a
 * predict load: a POST to a route Python registered (TF Serving ":predict", KServe V2 "/infer") whose body is a
 * numeric tensor the decoder reads straight into the model's input dtype and whose shape is the model's. Such a
 * request is queued on its route's Slot; a Python thread per model version takes the queued rows as one batch
 * (Slot.take, one call per batch, waiting without the GIL), runs the model, and hands the outputs back
 * (Batch.answer), which writes each request's JSON answer without the GIL; this thread sends them.
 *
 * Everything else (another method or route, a header it does not handle, a body the decoder does not read
 * exactly, a shape that is not the model's, a bad request of any kind) is never answered here: the connection,
 * with the bytes read from it so far, is handed to the Python server (queued, with an eventfd its event loop
 * watches: this thread never waits for the GIL to hand over), which answers it as it answers every connection,
 * errors worded alike. So this front end
 * changes how fast the common request is answered, never what any request gets.
 *
 * With several server processes on one port (workbench.serving.workers), each has a front end, and they keep
 * their connections even through the table the processes share (Frontend.balance): a connection idle between
 * requests is passed to another process when this one has more than one above it or steps aside to load, and
 * those passed here arrive on a datagram socket this thread reads.
 *
 * Threads: only the front end's thread touches connections; Slots are shared under their own locks; a Batch
 * belongs to the Python thread that took it.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_decode.h"

#define MAX_HEAD (64 * 1024) /* request line and headers; more: the Python server answers 431 */
#define MAX_ROUTES 4096
#define READ_CHUNK (64 * 1024)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------------ growable bytes */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return 0;
    b->p = p;
    b->cap = cap;
    return 1;
}

static int buf_add(Buf *b, const char *s, size_t n) {
    if (!buf_reserve(b, n))
        return 0;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 1;
}

/* ------------------------------------------------------------------------------------------- number formatting */

static const double P10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* 10^e (|e| < 60) as a double: exact to |e| <= 22, within a few ulps beyond (good enough for a candidate). */
static inline double pow10_approx(int e) {
    double f = 1.0;
    int a = e < 0 ? -e : e;
    while (a > 22) {
        f *= 1e22;
        a -= 22;
    }
    f *= P10[a];
    return f;
}

/* Whether n * 10^e, read as a JSON reader does (to the nearest double) and cast to float32, is x. */
static inline int reads_back(uint64_t n, int e, float x) {
    if (e >= -22 && e <= 22) /* n < 2^53 and 10^e exact: one IEEE operation rounds once */
        return (float)(e >= 0 ? (double)n * P10[e] : (double)n / P10[-e]) == x;
    char text[40];
    snprintf(text, sizeof text, "%llue%d", (unsigned long long)n, e);
    return (float)strtod(text, NULL) == x;
}

/* The shortest digits (n, e: n * 10^e reads back as x) of a finite float32 x > 0, and among those of that
   length the nearest to x, as orjson (Ryu) finds them; 0: none up to 9 digits (cannot happen for float32). */
static int shortest32(float x, uint64_t *digits, int *exponent) {
    double v = (double)x; /* exact */
    int k = (int)floor(log10(v)); /* 10^k <= v < 10^(k+1), give or take one */
    for (int p = 1; p <= 10; p++) {
        int e = k - p + 1; /* p digits: n in [10^(p-1), 10^p) */
        double scaled = e >= 0 ? v / pow10_approx(e) : v * pow10_approx(-e);
        double r = nearbyint(scaled);
        if (r < 1.0)
            continue;
        uint64_t n = (uint64_t)r;
        if (reads_back(n, e, x)) {
            *digits = n;
            *exponent = e;
            return 1;
        }
        /* the other neighbour (the nearest may fall outside where x's own interval is lopsided) */
        uint64_t m = r > scaled ? n - 1 : n + 1;
        if (m > 0 && reads_back(m, e, x)) {
            *digits = m;
            *exponent = e;
            return 1;
        }
    }
    return 0;
}

/* Digits of n (no trailing zeros), as text; their count. */
static int utoa(uint64_t n, char *out) {
    char tmp[24];
    int len = 0;
    do {
        tmp[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    for (int i = 0; i < len; i++)
        out[i] = tmp[len - 1 - i];
    return len;
}

/* A float32 as JSON, in the same text orjson gives a numpy float32 (shortest digits that read back; plain
   notation for decimal exponents -5..12, else d.ddde+XX); at most 32 bytes. */
static int format_f32(float x, char *out) {
    if (isnan(x) || isinf(x))
        return -1; /* not JSON: the caller fails the batch */
    char *o = out;
    if (signbit(x)) {
        *o++ = '-';
        x = -x;
    }
    if (x == 0.0f) {
        memcpy(o, "0.0", 3);
        return (int)(o - out) + 3;
    }
    uint64_t n;
    int e;
    char digits[24];
    int len;
    if (shortest32(x, &n, &e)) {
        while (n % 10 == 0) {
            n /= 10;
            e++;
        }
        len = utoa(n, digits);
    } else {
        char tmp[40];
        snprintf(tmp, sizeof tmp, "%.8e", (double)x); /* d.dddddddde[+-]XX */
        len = 0;
        for (char *t = tmp; *t && *t != 'e'; t++)
            if (*t != '.')
                digits[len++] = *t;
        e = atoi(strchr(tmp, 'e') + 1) - (len - 1);
        while (len > 1 && digits[len - 1] == '0') {
            len--;
            e++;
        }
    }
    int kk = len + e; /* 10^(kk-1) <= x < 10^kk */
    if (e >= 0 && kk <= 13) { /* 1234e7 -> 12340000000.0 */
        memcpy(o, digits, len);
        o += len;
        for (int i = 0; i < e; i++)
            *o++ = '0';
        memcpy(o, ".0", 2);
        o += 2;
    } else if (kk > 0 && kk <= 13) { /* 1234e-2 -> 12.34 */
        memcpy(o, digits, kk);
        o += kk;
        *o++ = '.';
        memcpy(o, digits + kk, len - kk);
        o += len - kk;
    } else if (kk > -6 && kk <= 0) { /* 1234e-6 -> 0.001234 */
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -kk; i++)
            *o++ = '0';
        memcpy(o, digits, len);
        o += len;
    } else { /* 1.234e+30, 1e-7 */
        *o++ = digits[0];
        if (len > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, len - 1);
            o += len - 1;
        }
        o += sprintf(o, "e%s%d", kk - 1 >= 0 ? "+" : "", kk - 1);
    }
    return (int)(o - out);
}

static int format_i64(int64_t v, char *out) {
    char *o = out;
    uint64_t u = (uint64_t)v;
    if (v < 0) {
        *o++ = '-';
        u = 0 - u;
    }
    return (int)(o - out) + utoa(u, o);
}

/* ------------------------------------------------------------------------------------------------------ slots */

typedef struct Conn Conn;
typedef struct Frontend Frontend;
typedef struct Slot Slot;

typedef struct Req {
    struct Req *next;
    Conn *conn;
    Frontend *fe;
    ptrdiff_t rows;
    char format; /* 'p': {"predictions"} (TF Serving rows), 'o': {"outputs"} (columnar), 'v': KServe V2 */
    char *data;  /* rows x the slot's row bytes */
    double t0;   /* when the whole request had been read */
    char *id;    /* V2 "id", as the JSON string's bytes (quotes included), or NULL */
    size_t id_len;
} Req;

struct Slot {
    atomic_int refs;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    int closed;
    Req *head, *tail;
    ptrdiff_t queued_rows;
    char kind; /* input values: 'f' float32, 'd' float64, 'q' int64 */
    int ndim;  /* of one row */
    ptrdiff_t row_shape[MAX_DEPTH];
    ptrdiff_t row_values;
    size_t row_bytes;
    char *signature_name;   /* REST: the one a body may name */
    char *input_name;       /* V2: the input's name */
    char *input_datatype;   /* V2: its datatype ("FP32") */
    char *head_ok;          /* "HTTP/1.1 200 OK\r\n...x-model-version: N\r\ncontent-length: " */
    char *v2_open;          /* V2: {"model_name":...,"model_version":"N","outputs":[{"name":...,"datatype":...,"shape":[ */
    double last_put;        /* when the latest request was queued */
    Py_ssize_t queued;      /* requests waiting */
    int gathering;          /* the lane waits for more requests to join the batch it holds: */
    Py_ssize_t gather_count, gather_rows, gather_limit; /* its requests and rows so far, and the rows it waits for */
    int running;            /* a batch is out: taken by the lane's thread and not yet back for more, or inline */
    PyObject *inline_fn;    /* run(batch) on the front end's thread: for a lone client, no thread hand-offs */
    atomic_long *open;      /* the connections of the front end that routes here (set by its routes()) */
};

static void req_free(Req *r) {
    free(r->data);
    free(r->id);
    free(r);
}

static void slot_unref(Slot *s) {
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (Req *r = s->head, *next; r; r = next) {
        next = r->next;
        req_free(r); /* (only at exit: a closed slot is drained before its last reference goes) */
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->ready);
    free(s->signature_name);
    free(s->input_name);
    free(s->input_datatype);
    free(s->head_ok);
    free(s->v2_open);
    free(s);
}

/* Queue r; 0 if the slot is closed (its version was swapped out: the caller looks the route up again). */
static int slot_put(Slot *s, Req *r) {
    pthread_mutex_lock(&s->lock);
    if (s->closed) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    r->next = NULL;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued_rows += r->rows;
    s->queued++;
    s->last_put = r->t0;
    /* A lane gathering a batch wakes only once it would stop waiting (or at its timer): each wake-up would take
       CPU from this thread, which is reading the very requests it waits for. */
    int wake = 1;
    if (s->gathering) {
        long open = s->open ? atomic_load(s->open) : 0;
        wake = s->gather_count + s->queued >= open || s->gather_rows + s->queued_rows >= s->gather_limit;
    }
    if (wake)
        pthread_cond_signal(&s->ready);
    pthread_mutex_unlock(&s->lock);
    return 1;
}

/* ------------------------------------------------------------------------------------------------ connections */

struct Conn {
    int fd;
    Buf in;              /* read, not yet taken as a request */
    Buf out;             /* answers not yet sent */
    size_t out_sent;
    size_t head_len;     /* of the request at the front of `in`, once its end was seen; 0 until then */
    size_t body_len;
    int busy;            /* its request is with a slot */
    int peer_closed;     /* read saw the end: close once the answer in hand is sent (or dropped) */
    int blocked;         /* `in` is full: stopped reading until a request is taken */
    double last;         /* last activity, for the keep-alive timeout */
    Conn *prev, *next;   /* every open connection */
};

/* An answer on its way to its connection: whole response bytes, or output values this thread writes as JSON (so
   that the model's thread spends no time on it). */
typedef struct Done {
    struct Done *next;
    Conn *conn;
    char *bytes;
    size_t len;
    char *values;  /* or: the request's rows of the output, packed */
    Slot *slot;    /* (a reference, for its response head and V2 prefix) */
    char fmt;      /* their type: 'f' float32, 'i' int32, 'q' int64 */
    char format;   /* 'p', 'o' or 'v' as in Req */
    int ndim;
    ptrdiff_t shape[MAX_DEPTH];
    char *id;      /* V2 "id" (moved from the Req) */
    size_t id_len;
} Done;

typedef struct {
    char *path;
    size_t len;
    Slot *slot;
    char protocol; /* 'r' TF Serving REST, '2' KServe V2 */
} Route;

/* A connection on its way to the Python server, with what was read from it. */
typedef struct Handoff {
    struct Handoff *next;
    int fd;
    char *data;
    size_t len;
} Handoff;

/* The table the server processes share (see workers.Balancer): a row of int64 per process. */
typedef struct {
    Py_buffer view;
    volatile int64_t *t;
    Py_ssize_t me, width, count;   /* this process's row; row width; rows */
    Py_ssize_t pid, open, draining, last, native, took; /* column indices (took: the first of count) */
    PyObject *pass_fd;             /* pass_fd(fd) -> bool: sent to another process (this copy is then closed) */
    int inbox;                     /* where the others' connections arrive (a Unix datagram socket) */
} Balance;

struct Frontend {
    int listen_fd;
    int epoll_fd;
    int wake_fd;
    pthread_t thread;
    int running;
    atomic_int stopping;
    double grace_until;
    double keep_alive;
    size_t max_body;
    int handoff_fd;    /* eventfd: connections queued for the Python server (Frontend.handoffs) */
    pthread_mutex_t handoff_lock;
    struct Handoff *handoff_head, *handoff_tail;
    PyThreadState *tstate; /* the front end thread's own, kept for its life (TensorFlow keeps per-thread state) */
    pthread_mutex_t routes_lock;
    Route *routes;
    int nroutes;
    pthread_mutex_t done_lock;
    Done *done_head, *done_tail;
    Conn *conns;
    Conn *dead; /* closed, to be freed (conn_free) */
    Buf scratch; /* an answer's body, while its head is written */
    atomic_long open, handed_off, served, passed, adopted;
    Balance *bal;            /* set before start, if several processes serve the port */
    atomic_int pass_wanted;  /* Frontend.pass_idle(): look at every idle connection */
};

static char LISTEN_TAG, WAKE_TAG, INBOX_TAG;

static void wake(Frontend *fe) {
    uint64_t one = 1;
    ssize_t n = write(fe->wake_fd, &one, sizeof one);
    (void)n;
}

/* Take and give back the GIL on the front end's thread. */
static void gil_take(Frontend *fe) { PyEval_RestoreThread(fe->tstate); }
static void gil_give(Frontend *fe) { fe->tstate = PyEval_SaveThread(); }

/* This process's connections, in the shared table. */
static void bal_count(Frontend *fe) {
    if (fe->bal)
        fe->bal->t[fe->bal->me * fe->bal->width + fe->bal->native] = atomic_load(&fe->open);
}

static void conn_unlink(Frontend *fe, Conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        fe->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub(&fe->open, 1);
    bal_count(fe);
}

/* Whether a connection of this process might go to another (as workers.Balancer.wants_out): it steps aside, or
   has more than one connection above another process. Python's pass_fd decides. */
static int bal_wants_out(Frontend *fe) {
    Balance *b = fe->bal;
    if (b == NULL)
        return 0;
    volatile int64_t *mine = b->t + b->me * b->width;
    if (mine[b->draining])
        return 1;
    int64_t here = mine[b->open] + mine[b->native];
    for (Py_ssize_t j = 0; j < b->count; j++) {
        volatile int64_t *row = b->t + j * b->width;
        if (j != b->me && row[b->pid] && !row[b->draining] && here > row[b->open] + row[b->native] + 1)
            return 1;
    }
    return 0;
}

/* Nothing read of a next request, nothing left to write, no answer awaited: the socket can change hands. */
static int conn_idle(Conn *c) {
    return c->fd >= 0 && !c->busy && !c->peer_closed && !c->blocked && c->in.len == 0 && c->out.len == 0;
}

static void conn_forget(Frontend *fe, Conn *c);

/* Pass an idle connection to another process if the balance asks for it; 1 if it went (c is freed). With the
   GIL held (`locked`), or taken here. */
static int conn_pass_locked(Frontend *fe, Conn *c, int locked) {
    if (!conn_idle(c) || !bal_wants_out(fe))
        return 0;
    if (!locked)
        gil_take(fe);
    PyObject *res = PyObject_CallFunction(fe->bal->pass_fd, "i", c->fd);
    int passed = res != NULL && PyObject_IsTrue(res) == 1;
    if (res == NULL)
        PyErr_WriteUnraisable(fe->bal->pass_fd);
    Py_XDECREF(res);
    if (!locked)
        gil_give(fe);
    if (passed) {
        atomic_fetch_add(&fe->passed, 1);
        conn_forget(fe, c);
    }
    return passed;
}

static int conn_pass(Frontend *fe, Conn *c) { return conn_pass_locked(fe, c, 0); }

/* Freed once the front end's thread is done with this round of events (an event in hand may still name it). */
static void conn_free(Frontend *fe, Conn *c) {
    c->next = fe->dead;
    fe->dead = c;
}

static void free_dead(Frontend *fe) {
    while (fe->dead) {
        Conn *c = fe->dead;
        fe->dead = c->next;
        free(c->in.p);
        free(c->out.p);
        free(c);
    }
}

/* Close now; a busy connection's struct stays until its answer comes back (then conn_done frees it). */
static void conn_close(Frontend *fe, Conn *c) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
        conn_unlink(fe, c);
    }
    if (!c->busy)
        conn_free(fe, c);
}

/* The connection went to another process: drop this copy of its socket (the other's stays open). */
static void conn_forget(Frontend *fe, Conn *c) {
    epoll_ctl(fe->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL); /* (the other copy keeps the registration alive) */
    close(c->fd);
    c->fd = -1;
    conn_unlink(fe, c);
    conn_free(fe, c);
}

/* The Python server takes the connection, with what was read from it (queued for its event loop). */
static void conn_handoff(Frontend *fe, Conn *c) {
    int fd = c->fd;
    epoll_ctl(fe->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
    conn_unlink(fe, c);
    c->fd = -1;
    Handoff *h = calloc(1, sizeof *h);
    if (h == NULL) {
        close(fd);
        conn_free(fe, c);
        return;
    }
    h->fd = fd;
    h->data = c->in.p; /* (the buffer goes with it) */
    h->len = c->in.len;
    c->in.p = NULL;
    c->in.len = c->in.cap = 0;
    atomic_fetch_add(&fe->handed_off, 1); /* (before: Python may answer it before this thread goes on) */
    pthread_mutex_lock(&fe->handoff_lock);
    if (fe->handoff_tail)
        fe->handoff_tail->next = h;
    else
        fe->handoff_head = h;
    fe->handoff_tail = h;
    pthread_mutex_unlock(&fe->handoff_lock);
    uint64_t one = 1;
    ssize_t n = write(fe->handoff_fd, &one, sizeof one);
    (void)n;
    conn_free(fe, c);
}

/* ---------------------------------------------------------------------------------------------- request parsing */

enum { NEED_MORE, HANDOFF, QUEUED };

static int lower_eq(const char *s, size_t n, const char *lower) {
    if (strlen(lower) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        if (ch != lower[i])
            return 0;
    }
    return 1;
}

static int contains_lower(const char *s, size_t n, const char *word) {
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++)
        if (lower_eq(s + i, w, word))
            return 1;
    return 0;
}

static int is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The request line and headers in c->in (head_len bytes, ending in CRLF CRLF): the target and the body's length
   when this front end can take the request; 0 when the Python server should. */
static int parse_head(Frontend *fe, Conn *c, const char **target, size_t *target_len) {
    const char *p = c->in.p, *end = p + c->head_len - 2; /* the last CRLF ends the header block */
    if (c->head_len < 16 || memcmp(p, "POST /", 6) != 0)
        return 0;
    const char *t = p + 5, *sp = memchr(t, ' ', (size_t)(end - t));
    if (sp == NULL || end - sp < 10 || memcmp(sp, " HTTP/1.1\r\n", 11) != 0)
        return 0;
    for (const char *q = t; q < sp; q++)
        if (*q == '?' || *q == '%' || *q == '#' || (unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return 0; /* a query, an escape...: the Python server's routing */
    *target = t;
    *target_len = (size_t)(sp - t);
    int have_length = 0;
    size_t length = 0;
    for (const char *line = sp + 11; line < end;) {
        const char *eol = memchr(line, '\r', (size_t)(end - line) + 1);
        if (eol == NULL || eol[1] != '\n')
            return 0;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL || colon == line)
            return 0;
        for (const char *q = line; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return 0;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *q = v; q < ve; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || (unsigned char)*q == 0x7f)
                return 0;
        size_t name_len = (size_t)(colon - line), vlen = (size_t)(ve - v);
        if (lower_eq(line, name_len, "content-length")) {
            if (have_length || vlen == 0 || vlen > 15)
                return 0;
            for (const char *q = v; q < ve; q++) {
                if (!is_digit(*q))
                    return 0;
                length = length * 10 + (size_t)(*q - '0');
            }
            have_length = 1;
        } else if (lower_eq(line, name_len, "transfer-encoding") || lower_eq(line, name_len, "expect") ||
                   lower_eq(line, name_len, "upgrade")) {
            return 0;
        } else if (lower_eq(line, name_len, "connection")) {
            if (contains_lower(v, vlen, "close") || contains_lower(v, vlen, "upgrade"))
                return 0;
        }
        line = eol + 2;
    }
    if (!have_length || length == 0 || length > fe->max_body)
        return 0;
    c->body_len = length;
    return 1;
}

static Slot *route_find(Frontend *fe, const char *path, size_t len, char *protocol) {
    Slot *found = NULL;
    pthread_mutex_lock(&fe->routes_lock);
    for (int i = 0; i < fe->nroutes; i++) {
        Route *r = &fe->routes[i];
        if (r->len == len && memcmp(r->path, path, len) == 0) {
            found = r->slot;
            *protocol = r->protocol;
            atomic_fetch_add(&found->refs, 1);
            break;
        }
    }
    pthread_mutex_unlock(&fe->routes_lock);
    return found;
}

static int x87_now(void) {
#if LDBL_MANT_DIG == 64
    return x87_extended();
#else
    return 0;
#endif
}

/* A tensor of the slot's kind at r->p, with its shape in t->dims (t->leaf + 1 of them); 0: not one. */
static int read_values(Reader *r, Slot *s, Reader *t, char **data) {
    *t = (Reader){.p = r->p, .end = r->end, .kind = s->kind, .leaf = -1, .x87 = r->x87};
    if (!expect(t, "[", 1))
        return 0;
    for (int i = 0; i < MAX_DEPTH; i++)
        t->dims[i] = -1;
    size_t itemsize = s->kind == 'f' ? 4 : 8;
    t->cap = (t->end - t->p) / 2 + 1;
    *data = malloc((size_t)t->cap * itemsize);
    if (*data == NULL)
        return 0;
    t->out = *data;
    if (!read_array(t, 0)) {
        free(*data);
        *data = NULL;
        return 0;
    }
    r->p = t->p;
    return 1;
}

/* Rows, when `dims` (ndim of them) are a batch of the slot's rows; else 0. */
static ptrdiff_t batch_rows(Slot *s, const ptrdiff_t *dims, int ndim) {
    if (ndim != s->ndim + 1 || dims[0] < 1)
        return 0;
    for (int i = 0; i < s->ndim; i++)
        if (dims[i + 1] != s->row_shape[i])
            return 0;
    return dims[0];
}

/* A TF Serving predict body: {"instances"|"inputs": tensor[, "signature_name": "..."]} in any order. */
static int decode_rest(Slot *s, const char *body, size_t len, Req *req) {
    Reader r = {.p = body, .end = body + len, .leaf = -1, .x87 = x87_now()};
    const char *key;
    ptrdiff_t key_len;
    int got_sig = 0;
    if (!open_object(&r))
        return 0;
    for (;;) {
        if (!read_key(&r, &key, &key_len))
            return 0;
        if ((is_key(key, key_len, "instances") || is_key(key, key_len, "inputs")) && req->data == NULL) {
            Reader t;
            req->format = key_len == 9 ? 'p' : 'o'; /* instances | inputs */
            if (!read_values(&r, s, &t, &req->data))
                return 0;
            req->rows = t.leaf >= 0 ? batch_rows(s, t.dims, t.leaf + 1) : 0;
            if (req->rows == 0)
                return 0;
        } else if (is_key(key, key_len, "signature_name") && !got_sig) {
            const char *name;
            ptrdiff_t name_len;
            if (!read_plain_string(&r, &name, &name_len))
                return 0;
            if (name_len != 0 && !is_key(name, name_len, s->signature_name))
                return 0; /* another signature: the Python server says which there is */
            got_sig = 1;
        } else {
            return 0;
        }
        int more = next_member(&r);
        if (more < 0)
            return 0;
        if (!more)
            break;
    }
    skip_ws(&r);
    return r.p == r.end && req->data != NULL;
}

static int upper_eq(const char *s, ptrdiff_t n, const char *upper) {
    if ((size_t)n != strlen(upper))
        return 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        if (ch != upper[i])
            return 0;
    }
    return 1;
}

/* "shape": [d0, d1, ...] into dims; its length, or -1. */
static int read_shape(Reader *r, ptrdiff_t *dims) {
    int n = 0;
    if (!expect(r, "[", 1))
        return -1;
    skip_ws(r);
    if (expect(r, "]", 1))
        return 0;
    for (;;) {
        ptrdiff_t d = 0;
        int digits = 0;
        while (r->p < r->end && is_digit(*r->p) && digits < 15) {
            d = d * 10 + (*r->p++ - '0');
            digits++;
        }
        if (digits == 0 || (r->p < r->end && is_digit(*r->p)) || (digits > 1 && r->p[-digits] == '0') ||
            n == MAX_DEPTH)
            return -1;
        dims[n++] = d;
        skip_ws(r);
        if (expect(r, "]", 1))
            return n;
        if (!expect(r, ",", 1))
            return -1;
        skip_ws(r);
    }
}

/* A KServe V2 infer body: {"inputs": [one tensor of the model's one input][, "id": "..."]}. */
static int decode_v2_body(Slot *s, const char *body, size_t len, Req *req) {
    Reader r = {.p = body, .end = body + len, .leaf = -1, .x87 = x87_now()};
    const char *key;
    ptrdiff_t key_len;
    ptrdiff_t shape[MAX_DEPTH], count = -1;
    int ndim = -1;
    if (!open_object(&r))
        return 0;
    for (;;) {
        if (!read_key(&r, &key, &key_len))
            return 0;
        if (is_key(key, key_len, "inputs") && req->data == NULL) {
            int name_ok = 0, type_ok = 0;
            if (!expect(&r, "[", 1) || !open_object(&r))
                return 0;
            for (;;) {
                const char *k, *text;
                ptrdiff_t k_len, text_len;
                if (!read_key(&r, &k, &k_len))
                    return 0;
                if (is_key(k, k_len, "name") && !name_ok) {
                    if (!read_plain_string(&r, &text, &text_len) || !is_key(text, text_len, s->input_name))
                        return 0;
                    name_ok = 1;
                } else if (is_key(k, k_len, "datatype") && !type_ok) {
                    if (!read_plain_string(&r, &text, &text_len) || !upper_eq(text, text_len, s->input_datatype))
                        return 0;
                    type_ok = 1;
                } else if (is_key(k, k_len, "shape") && ndim < 0) {
                    if ((ndim = read_shape(&r, shape)) < 0)
                        return 0;
                } else if (is_key(k, k_len, "data") && req->data == NULL) {
                    Reader t;
                    if (!read_values(&r, s, &t, &req->data))
                        return 0;
                    count = t.n;
                } else {
                    return 0;
                }
                int more = next_member(&r);
                if (more < 0)
                    return 0;
                if (!more)
                    break;
            }
            skip_ws(&r);
            if (!expect(&r, "]", 1) || !name_ok || !type_ok || ndim < 0 || req->data == NULL)
                return 0; /* (a second input, or a field missing: the Python server) */
            req->rows = batch_rows(s, shape, ndim);
            if (req->rows == 0 || count != req->rows * s->row_values)
                return 0;
        } else if (is_key(key, key_len, "id") && req->id == NULL) {
            const char *text;
            ptrdiff_t text_len;
            if (!read_plain_string(&r, &text, &text_len))
                return 0;
            for (ptrdiff_t i = 0; i < text_len; i++)
                if ((unsigned char)text[i] >= 0x7f)
                    return 0; /* (only ASCII is echoed from here; the Python server checks the rest) */
            req->id_len = (size_t)text_len + 2;
            req->id = malloc(req->id_len);
            if (req->id == NULL)
                return 0;
            memcpy(req->id, text - 1, req->id_len);
        } else {
            return 0;
        }
        int more = next_member(&r);
        if (more < 0)
            return 0;
        if (!more)
            break;
    }
    skip_ws(&r);
    req->format = 'v';
    return r.p == r.end && req->data != NULL;
}

static PyObject *make_batch(Slot *s, Req *list, Py_ssize_t count, Py_ssize_t rows);

/* Run r at once on this thread if it is the only client's and its model version is idle: the lane's thread would
   only add two thread hand-offs (~0.1 ms of a ~0.3 ms request). 1: done (answered, or failed with an answer). */
static int run_inline(Frontend *fe, Slot *s, Req *r) {
    if (s->inline_fn == NULL || atomic_load(&fe->open) != 1)
        return 0;
    pthread_mutex_lock(&s->lock);
    int idle = !s->running && s->head == NULL && !s->closed;
    if (idle)
        s->running = 1;
    pthread_mutex_unlock(&s->lock);
    if (!idle)
        return 0;
    gil_take(fe);
    PyObject *fn = Py_XNewRef(s->inline_fn); /* (close() may have cleared it meanwhile) */
    if (fn == NULL) {
        gil_give(fe);
        pthread_mutex_lock(&s->lock);
        s->running = 0;
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    r->next = NULL;
    PyObject *batch = make_batch(s, r, 1, r->rows);
    PyObject *res = batch ? PyObject_CallOneArg(fn, batch) : NULL;
    if (res == NULL)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(res);
    Py_XDECREF(batch); /* (answers what the call did not) */
    Py_DECREF(fn);
    gil_give(fe);
    pthread_mutex_lock(&s->lock);
    s->running = 0;
    pthread_mutex_unlock(&s->lock);
    return 1;
}

/* The request at the front of c->in: queued, handed to Python, or not all read yet. */
static int take_request(Frontend *fe, Conn *c) {
    if (c->head_len == 0) {
        size_t scan = c->in.len < MAX_HEAD ? c->in.len : MAX_HEAD;
        const char *e = scan >= 4 ? memmem(c->in.p, scan, "\r\n\r\n", 4) : NULL;
        if (e == NULL)
            return c->in.len >= MAX_HEAD ? HANDOFF : NEED_MORE;
        c->head_len = (size_t)(e - c->in.p) + 4;
        const char *target;
        size_t target_len;
        if (!parse_head(fe, c, &target, &target_len)) {
            c->head_len = 0;
            return HANDOFF;
        }
    }
    if (c->in.len < c->head_len + c->body_len)
        return NEED_MORE;
    const char *target = c->in.p + 5;
    size_t target_len = (size_t)((const char *)memchr(target, ' ', c->head_len) - target);
    const char *body = c->in.p + c->head_len;
    for (int attempt = 0; attempt < 3; attempt++) {
        char protocol = 0;
        Slot *s = route_find(fe, target, target_len, &protocol);
        if (s == NULL)
            return HANDOFF;
        Req *req = calloc(1, sizeof *req);
        if (req == NULL) {
            slot_unref(s);
            return HANDOFF;
        }
        int ok = protocol == 'r' ? decode_rest(s, body, c->body_len, req) : decode_v2_body(s, body, c->body_len, req);
        if (!ok) {
            req_free(req);
            slot_unref(s);
            return HANDOFF;
        }
        req->conn = c;
        req->fe = fe;
        req->t0 = now_s();
        c->busy = 1;
        if (fe->bal)
            fe->bal->t[fe->bal->me * fe->bal->width + fe->bal->last] = (int64_t)(req->t0 * 1000);
        if (run_inline(fe, s, req) || slot_put(s, req)) {
            slot_unref(s); /* (the route keeps the slot; the taken batch holds its own reference) */
            size_t used = c->head_len + c->body_len;
            memmove(c->in.p, c->in.p + used, c->in.len - used);
            c->in.len -= used;
            c->head_len = c->body_len = 0;
            return QUEUED;
        }
        c->busy = 0;
        req_free(req);
        slot_unref(s); /* swapped out just now: the route points at its successor */
    }
    return HANDOFF;
}

/* Serve what c->in holds: queue a request, hand the connection over, or wait for more. */
static void conn_process(Frontend *fe, Conn *c) {
    while (!c->busy && c->fd >= 0 && c->in.len > 0 && c->out.len == 0) {
        int got = take_request(fe, c);
        if (got == HANDOFF) {
            conn_handoff(fe, c);
            return;
        }
        if (got == NEED_MORE)
            break;
    }
    if (c->fd >= 0 && !c->busy && c->peer_closed && c->out.len == 0)
        conn_close(fe, c);
}

static void conn_read(Frontend *fe, Conn *c) {
    size_t limit = fe->max_body + MAX_HEAD + READ_CHUNK;
    c->blocked = 0;
    for (;;) {
        if (c->in.len >= limit) {
            c->blocked = 1; /* read on once a request is taken */
            break;
        }
        if (!buf_reserve(&c->in, READ_CHUNK)) {
            conn_close(fe, c);
            return;
        }
        ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        if (n == 0) {
            c->peer_closed = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        c->peer_closed = 1; /* reset */
        c->in.len = 0;
        break;
    }
    c->last = now_s();
    if (c->peer_closed && !c->busy && c->in.len == 0) {
        conn_close(fe, c);
        return;
    }
    conn_process(fe, c);
}

static void conn_flush(Frontend *fe, Conn *c) {
    while (c->out_sent < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out_sent, c->out.len - c->out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* EPOLLOUT brings us back */
        c->out.len = c->out_sent = 0;
        conn_close(fe, c); /* the client went away */
        return;
    }
    c->out.len = c->out_sent = 0;
    c->last = now_s();
    if (c->blocked)
        conn_read(fe, c);
    else if (!conn_pass(fe, c))
        conn_process(fe, c);
}

/* An answer for c came back from a batch. */
static int format_answer(Done *d, Buf *body, Buf *out);

static void conn_done(Frontend *fe, Done *d) {
    Conn *c = d->conn;
    c->busy = 0;
    if (c->fd < 0) { /* closed meanwhile */
        conn_free(fe, c);
        return;
    }
    atomic_fetch_add(&fe->served, 1);
    int ok = d->values ? format_answer(d, &fe->scratch, &c->out) : buf_add(&c->out, d->bytes, d->len);
    if (!ok) {
        conn_close(fe, c);
        return;
    }
    conn_flush(fe, c);
}

/* A connection of this front end's from now on (accepted, or passed by another process). */
static Conn *conn_add(Frontend *fe, int fd) {
    Conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->last = now_s();
    /* (added edge-triggered: what is already there to read is reported at once) */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(fe->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        free(c);
        return NULL;
    }
    c->next = fe->conns;
    if (fe->conns)
        fe->conns->prev = c;
    fe->conns = c;
    atomic_fetch_add(&fe->open, 1);
    bal_count(fe);
    return c;
}

static void accept_all(Frontend *fe) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(fe->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a connection that went away before we took it */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        Conn *c = conn_add(fe, fd);
        if (c != NULL)
            conn_pass(fe, c); /* (before reading from it) */
    }
}

/* Connections other processes passed here: each a datagram naming the sender's row, with the socket attached. */
static void take_inbox(Frontend *fe) {
    Balance *b = fe->bal;
    for (int i = 0; i < 256; i++) {
        char text[16];
        char control[CMSG_SPACE(16 * sizeof(int))];
        struct iovec iov = {.iov_base = text, .iov_len = sizeof text - 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        ssize_t n = recvmsg(b->inbox, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
            return; /* EAGAIN: all taken */
        text[n] = 0;
        char *end;
        long source = strtol(text, &end, 10);
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            int nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(cm);
            for (int k = 0; k < nfds; k++) {
                if (end != text && source >= 0 && source < b->count)
                    b->t[b->me * b->width + b->took + source] += 1; /* (the sender counts it arrived) */
                if (atomic_load(&fe->stopping)) {
                    close(fds[k]);
                } else if (conn_add(fe, fds[k]) != NULL) {
                    atomic_fetch_add(&fe->adopted, 1);
                }
            }
        }
    }
}

/* Frontend.pass_idle(): every idle connection the balance asks to move goes (the GIL taken once for all). */
static void pass_idle(Frontend *fe) {
    int any = 0;
    for (Conn *c = fe->conns; c && !any; c = c->next)
        any = conn_idle(c);
    if (!any || !bal_wants_out(fe))
        return;
    gil_take(fe);
    for (Conn *c = fe->conns, *next; c && bal_wants_out(fe); c = next) {
        next = c->next;
        conn_pass_locked(fe, c, 1);
    }
    gil_give(fe);
}

static void take_done(Frontend *fe) {
    pthread_mutex_lock(&fe->done_lock);
    Done *d = fe->done_head;
    fe->done_head = fe->done_tail = NULL;
    pthread_mutex_unlock(&fe->done_lock);
    while (d) {
        Done *next = d->next;
        conn_done(fe, d);
        free(d->bytes);
        free(d->values);
        free(d->id);
        if (d->slot)
            slot_unref(d->slot);
        free(d);
        d = next;
    }
}

static void close_idle(Frontend *fe, double older_than) {
    for (Conn *c = fe->conns, *next; c; c = next) {
        next = c->next;
        if (!c->busy && c->out.len == 0 && c->last < older_than)
            conn_close(fe, c);
    }
}

static int any_busy(Frontend *fe) {
    for (Conn *c = fe->conns; c; c = c->next)
        if (c->busy || c->out.len)
            return 1;
    return 0;
}

static void *io_main(void *arg) {
    Frontend *fe = arg;
    PyGILState_STATE gil = PyGILState_Ensure(); /* this thread's Python state, then the GIL given back */
    gil_give(fe);
    struct epoll_event events[256];
    double next_scan = now_s() + 1.0;
    int listening = 1;
    for (;;) {
        int n = epoll_wait(fe->epoll_fd, events, 256, 200);
        for (int i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &WAKE_TAG) {
                uint64_t count;
                ssize_t r = read(fe->wake_fd, &count, sizeof count);
                (void)r;
            } else if (tag == &LISTEN_TAG) {
                if (listening)
                    accept_all(fe);
            } else if (tag == &INBOX_TAG) {
                take_inbox(fe);
            } else {
                Conn *c = tag;
                if (c->fd < 0)
                    continue;
                uint32_t e = events[i].events;
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP) && c->out.len)
                    conn_flush(fe, c);
                if (c->fd >= 0 && (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)))
                    conn_read(fe, c);
            }
        }
        take_done(fe);
        if (atomic_exchange(&fe->pass_wanted, 0) && !atomic_load(&fe->stopping))
            pass_idle(fe);
        free_dead(fe);
        double t = now_s();
        if (atomic_load(&fe->stopping)) {
            if (listening) {
                epoll_ctl(fe->epoll_fd, EPOLL_CTL_DEL, fe->listen_fd, NULL);
                listening = 0;
            }
            close_idle(fe, t + 1.0); /* every connection not waiting for an answer */
            if (!any_busy(fe) || t > fe->grace_until)
                break;
        } else if (t >= next_scan) {
            next_scan = t + 1.0;
            if (fe->keep_alive > 0)
                close_idle(fe, t - fe->keep_alive);
        }
    }
    for (Conn *c = fe->conns, *next; c; c = next) {
        next = c->next;
        conn_close(fe, c); /* (busy ones are freed when their answer comes, or at exit) */
    }
    free_dead(fe);
    gil_take(fe);
    PyGILState_Release(gil);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- Python types */

typedef struct {
    PyObject_HEAD
    Slot *slot;
} SlotObject;

typedef struct {
    PyObject_HEAD
    Slot *slot;
    Req **reqs;
    Py_ssize_t count;
    Py_ssize_t rows;
    char *data;
    size_t size;
    int exports;
} BatchObject;

typedef struct {
    PyObject_HEAD
    Frontend fe;
} FrontendObject;

static PyTypeObject SlotType, BatchType, FrontendType;

/* Send each request's answer (malloc'd bytes, or NULL: a generic 500) and wake the front end once. */
static void deliver(Req **reqs, char **answers, size_t *lengths, Py_ssize_t n) {
    Frontend *fe = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Req *r = reqs[i];
        if (r == NULL)
            continue;
        Done *d = calloc(1, sizeof *d);
        static const char oops[] = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                                   "content-length: 46\r\n\r\n{\"error\":\"internal error: no answer was made\"}";
        if (d == NULL || (answers[i] == NULL && (answers[i] = strdup(oops)) == NULL)) {
            free(d);
            continue; /* out of memory: the client waits until its connection times out */
        }
        if (lengths[i] == 0)
            lengths[i] = strlen(answers[i]);
        d->next = NULL;
        d->conn = r->conn;
        d->bytes = answers[i];
        d->len = lengths[i];
        answers[i] = NULL;
        fe = r->fe;
        pthread_mutex_lock(&fe->done_lock);
        if (fe->done_tail)
            fe->done_tail->next = d;
        else
            fe->done_head = d;
        fe->done_tail = d;
        pthread_mutex_unlock(&fe->done_lock);
    }
    if (fe != NULL)
        wake(fe);
}

static int batch_range(BatchObject *b, Py_ssize_t first, Py_ssize_t count, Py_ssize_t *stop) {
    if (count < 0)
        count = b->count - first;
    if (first < 0 || first > b->count || first + count > b->count) {
        PyErr_SetString(PyExc_IndexError, "requests out of range");
        return 0;
    }
    *stop = first + count;
    return 1;
}

static void batch_dealloc(BatchObject *b) {
    /* requests nobody answered (a bug on the Python side) still get an answer */
    char **answers = calloc((size_t)b->count + 1, sizeof *answers);
    size_t *lengths = calloc((size_t)b->count + 1, sizeof *lengths);
    if (answers && lengths)
        deliver(b->reqs, answers, lengths, b->count);
    free(answers);
    free(lengths);
    for (Py_ssize_t i = 0; i < b->count; i++)
        if (b->reqs[i])
            req_free(b->reqs[i]);
    free(b->reqs);
    free(b->data);
    if (b->slot)
        slot_unref(b->slot);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int batch_getbuffer(BatchObject *b, Py_buffer *view, int flags) {
    if (PyBuffer_FillInfo(view, (PyObject *)b, b->data, (Py_ssize_t)b->size, 1, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void batch_releasebuffer(BatchObject *b, Py_buffer *view) { b->exports--; }

static PyBufferProcs batch_buffer = {(getbufferproc)batch_getbuffer, (releasebufferproc)batch_releasebuffer};

/* Append `count` rows of values starting at `values` (row_len values each; inner dims `shape`) as nested lists. */
static int write_rows(Buf *b, const char *values, char fmt, Py_ssize_t itemsize, const Py_ssize_t *shape, int ndim,
                      int flat) {
    /* iterate over all values, opening and closing brackets by index arithmetic */
    Py_ssize_t total = 1;
    for (int i = 0; i < ndim; i++)
        total *= shape[i];
    if (!buf_reserve(b, (size_t)total * 34 + (size_t)ndim * 2 * (size_t)total + 16))
        return 0;
    char *o = b->p + b->len;
    Py_ssize_t idx[MAX_DEPTH] = {0};
    if (!flat)
        for (int i = 0; i < ndim; i++)
            *o++ = '[';
    else
        *o++ = '[';
    for (Py_ssize_t k = 0; k < total; k++) {
        int w;
        const char *v = values + k * itemsize;
        if (fmt == 'f') {
            float x;
            memcpy(&x, v, 4);
            w = format_f32(x, o);
        } else if (fmt == 'i') {
            int32_t x;
            memcpy(&x, v, 4);
            w = format_i64(x, o);
        } else {
            int64_t x;
            memcpy(&x, v, 8);
            w = format_i64(x, o);
        }
        if (w < 0)
            return -1;
        o += w;
        /* advance the index; close the dims that rolled over, and open them again if more follows */
        int d = ndim - 1, closed = 0;
        while (d >= 0 && ++idx[d] == shape[d]) {
            idx[d] = 0;
            d--;
            closed++;
        }
        if (flat) {
            if (k + 1 < total)
                *o++ = ',';
            continue;
        }
        for (int i = 0; i < closed; i++)
            *o++ = ']';
        if (k + 1 < total) {
            *o++ = ',';
            for (int i = 0; i < closed; i++)
                *o++ = '[';
        }
    }
    if (flat)
        *o++ = ']';
    b->len = (size_t)(o - b->p);
    return 1;
}

/* The JSON body of d's answer into `body`, and the whole response after `out`'s bytes. 0: out of memory. */
static int format_answer(Done *d, Buf *body, Buf *out) {
    Slot *s = d->slot;
    Py_ssize_t itemsize = d->fmt == 'q' ? 8 : 4;
    Py_ssize_t shape[MAX_DEPTH];
    for (int i = 0; i < d->ndim; i++)
        shape[i] = d->shape[i];
    body->len = 0;
    int ok;
    if (d->format == 'v') {
        char dims[32 * MAX_DEPTH];
        int at = 0;
        for (int i = 0; i < d->ndim; i++)
            at += snprintf(dims + at, sizeof dims - (size_t)at, i ? ",%zd" : "%zd", shape[i]);
        const char *dt = d->fmt == 'f' ? "FP32" : d->fmt == 'i' ? "INT32" : "INT64";
        ok = buf_add(body, s->v2_open, strlen(s->v2_open)) && buf_add(body, "\"datatype\":\"", 12) &&
             buf_add(body, dt, strlen(dt)) && buf_add(body, "\",\"shape\":[", 11) && buf_add(body, dims, (size_t)at) &&
             buf_add(body, "],\"data\":", 9) && write_rows(body, d->values, d->fmt, itemsize, shape, d->ndim, 1) > 0 &&
             buf_add(body, "}]", 2) && (!d->id || (buf_add(body, ",\"id\":", 6) && buf_add(body, d->id, d->id_len))) &&
             buf_add(body, "}", 1);
    } else {
        const char *open = d->format == 'p' ? "{\"predictions\":" : "{\"outputs\":";
        ok = buf_add(body, open, strlen(open)) && write_rows(body, d->values, d->fmt, itemsize, shape, d->ndim, 0) > 0 &&
             buf_add(body, "}", 1);
    }
    char length[24];
    int ll = snprintf(length, sizeof length, "%zu\r\n\r\n", body->len);
    return ok && buf_add(out, s->head_ok, strlen(s->head_ok)) && buf_add(out, length, (size_t)ll) &&
           buf_add(out, body->p, body->len);
}

/* Each request's time since it was read, for requests [first, stop). */
static PyObject *batch_latencies(BatchObject *b, Py_ssize_t first, Py_ssize_t stop) {
    PyObject *latencies = PyList_New(stop - first);
    if (latencies == NULL)
        return NULL;
    double t = now_s();
    for (Py_ssize_t i = first; i < stop; i++) {
        Req *r = b->reqs[i];
        PyObject *v = PyFloat_FromDouble(r ? t - r->t0 : 0.0);
        if (v == NULL) {
            Py_DECREF(latencies);
            return NULL;
        }
        PyList_SET_ITEM(latencies, i - first, v);
    }
    return latencies;
}

static PyObject *batch_ages(BatchObject *b, PyObject *args) {
    Py_ssize_t first = 0, count = -1, stop;
    if (!PyArg_ParseTuple(args, "|nn:ages", &first, &count) || !batch_range(b, first, count, &stop))
        return NULL;
    return batch_latencies(b, first, stop);
}

static PyObject *batch_answer(BatchObject *b, PyObject *args, PyObject *kw) {
    static char *names[] = {"outputs", "first", "count", "before", NULL};
    PyObject *array, *before = Py_None;
    Py_ssize_t first = 0, count = -1, stop;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|nnO:answer", names, &array, &first, &count, &before) ||
        !batch_range(b, first, count, &stop))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0)
        return NULL;
    char fmt = 0;
    const char *f = view.format ? view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (f[0] && !f[1]) {
        if (f[0] == 'f' && view.itemsize == 4)
            fmt = 'f';
        else if ((f[0] == 'i' || f[0] == 'l' || f[0] == 'q') && view.itemsize == 4)
            fmt = 'i';
        else if ((f[0] == 'l' || f[0] == 'q') && view.itemsize == 8)
            fmt = 'q';
    }
    Py_ssize_t rows = 0;
    for (Py_ssize_t i = first; i < stop; i++)
        rows += b->reqs[i] ? b->reqs[i]->rows : 0;
    if (!fmt || view.ndim < 1 || view.shape[0] != rows || view.ndim > MAX_DEPTH) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "answer needs a float32, int32 or int64 array of %zd rows", rows);
        return NULL;
    }
    Py_ssize_t row_values = 1;
    for (int i = 1; i < view.ndim; i++)
        row_values *= view.shape[i];
    if (row_values == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the model's outputs are empty");
        return NULL;
    }
    if (fmt == 'f') {
        const float *v = view.buf;
        for (Py_ssize_t k = 0; k < rows * row_values; k++) {
            if (!isfinite(v[k])) {
                PyBuffer_Release(&view);
                PyErr_SetString(PyExc_ValueError, "the model's outputs are not all finite numbers (NaN or infinity)");
                return NULL;
            }
        }
    }
    Py_ssize_t n = stop - first;
    PyObject *latencies = batch_latencies(b, first, stop);
    if (latencies == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (before != Py_None) { /* (metrics, say, counted before a client can see its answer) */
        PyObject *res = PyObject_CallOneArg(before, latencies);
        if (res == NULL) {
            Py_DECREF(latencies);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(res);
    }
    Slot *s = b->slot;
    Done *head = NULL, *tail = NULL;
    Frontend *fe = NULL;
    const char *values = view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Req *r = b->reqs[first + i];
        if (r == NULL)
            continue;
        size_t nbytes = (size_t)(r->rows * row_values * view.itemsize);
        Done *d = calloc(1, sizeof *d);
        if (d != NULL && (d->values = malloc(nbytes)) == NULL) {
            free(d);
            d = NULL;
        }
        if (d == NULL) { /* out of memory: this client gets the generic 500 */
            char *none = NULL;
            size_t zero = 0;
            deliver(&b->reqs[first + i], &none, &zero, 1);
        } else {
            memcpy(d->values, values, nbytes);
            d->conn = r->conn;
            d->slot = s;
            atomic_fetch_add(&s->refs, 1);
            d->fmt = fmt;
            d->format = r->format;
            d->ndim = view.ndim;
            d->shape[0] = r->rows;
            for (int k = 1; k < view.ndim; k++)
                d->shape[k] = view.shape[k];
            d->id = r->id;
            d->id_len = r->id_len;
            r->id = NULL;
            if (tail)
                tail->next = d;
            else
                head = d;
            tail = d;
            fe = r->fe;
        }
        values += nbytes;
        req_free(r);
        b->reqs[first + i] = NULL;
    }
    PyBuffer_Release(&view);
    if (fe != NULL) {
        pthread_mutex_lock(&fe->done_lock);
        if (fe->done_tail)
            fe->done_tail->next = head;
        else
            fe->done_head = head;
        fe->done_tail = tail;
        pthread_mutex_unlock(&fe->done_lock);
        wake(fe);
    }
    return latencies;
}

static PyObject *batch_reply(BatchObject *b, PyObject *args) {
    Py_buffer response;
    Py_ssize_t first = 0, count = -1, stop;
    if (!PyArg_ParseTuple(args, "y*|nn:reply", &response, &first, &count))
        return NULL;
    if (!batch_range(b, first, count, &stop)) {
        PyBuffer_Release(&response);
        return NULL;
    }
    Py_ssize_t n = stop - first;
    char **answers = calloc((size_t)n + 1, sizeof *answers);
    size_t *lengths = calloc((size_t)n + 1, sizeof *lengths);
    if (answers && lengths) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (b->reqs[first + i] && (answers[i] = malloc((size_t)response.len)) != NULL) {
                memcpy(answers[i], response.buf, (size_t)response.len);
                lengths[i] = (size_t)response.len;
            }
        }
        deliver(b->reqs + first, answers, lengths, n);
        for (Py_ssize_t i = 0; i < n; i++) {
            free(answers[i]);
            if (b->reqs[first + i]) {
                req_free(b->reqs[first + i]);
                b->reqs[first + i] = NULL;
            }
        }
    }
    free(answers);
    free(lengths);
    PyBuffer_Release(&response);
    if (!answers || !lengths)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *batch_sizes(BatchObject *b, void *closure) {
    PyObject *list = PyList_New(b->count);
    for (Py_ssize_t i = 0; list && i < b->count; i++)
        PyList_SET_ITEM(list, i, PyLong_FromSsize_t(b->reqs[i] ? b->reqs[i]->rows : 0));
    return list;
}

static PyObject *batch_get_rows(BatchObject *b, void *closure) { return PyLong_FromSsize_t(b->rows); }

static PyObject *batch_formats(BatchObject *b, void *closure) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, b->count);
    for (Py_ssize_t i = 0; out && i < b->count; i++)
        PyBytes_AS_STRING(out)[i] = b->reqs[i] ? b->reqs[i]->format : '-';
    return out;
}

static PyObject *batch_ids(BatchObject *b, void *closure) {
    PyObject *list = PyList_New(b->count);
    for (Py_ssize_t i = 0; list && i < b->count; i++) {
        Req *r = b->reqs[i];
        PyObject *id = r && r->id ? PyUnicode_DecodeASCII(r->id + 1, (Py_ssize_t)r->id_len - 2, NULL) : Py_NewRef(Py_None);
        if (id == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, id);
    }
    return list;
}

static PyMethodDef batch_methods[] = {
    {"answer", (PyCFunction)(void (*)(void))batch_answer, METH_VARARGS | METH_KEYWORDS,
     "answer(outputs, first=0, count=-1, before=None) -> [seconds]: answer requests [first, first+count) from "
     "outputs (a C-contiguous float32/int32/int64 array, their rows in order); each one's time since it was read. "
     "before(those seconds) is called once the outputs are found good, before any answer leaves."},
    {"ages", (PyCFunction)batch_ages, METH_VARARGS,
     "ages(first=0, count=-1) -> [seconds]: each of requests [first, first+count)'s time since it was read."},
    {"reply", (PyCFunction)batch_reply, METH_VARARGS,
     "reply(response, first=0, count=-1): answer requests [first, first+count) with these HTTP response bytes "
     "(an error, or an answer made in Python)."},
    {NULL},
};

static PyGetSetDef batch_getset[] = {
    {"rows", (getter)batch_get_rows, NULL, "rows in the batch, all requests together", NULL},
    {"sizes", (getter)batch_sizes, NULL, "rows of each request, in order", NULL},
    {"formats", (getter)batch_formats, NULL,
     "each request's answer format: b'p' {\"predictions\"}, b'o' {\"outputs\"} (TF Serving), b'v' KServe V2; "
     "b'-' once answered", NULL},
    {"ids", (getter)batch_ids, NULL, "each V2 request's \"id\", or None", NULL},
    {NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workbench.serving._native.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Requests taken from a Slot together: their rows as one buffer of input values, and their answers.",
    .tp_methods = batch_methods,
    .tp_getset = batch_getset,
    .tp_as_buffer = &batch_buffer,
};

static char *dup_str(const char *s) {
    char *d = strdup(s ? s : "");
    return d;
}

static int slot_init(SlotObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"kind", "row_shape", "version", "signature_name", "input_name", "input_datatype",
                            "v2_prefix", NULL};
    const char *kind, *signature = "", *input_name = "", *input_datatype = "", *v2_prefix = "";
    PyObject *shape;
    long version;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOl|ssss:Slot", names, &kind, &shape, &version,
                                     &signature, &input_name, &input_datatype, &v2_prefix))
        return -1;
    if (self->slot != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Slot is already initialised");
        return -1;
    }
    if (strlen(kind) != 1 || !strchr("fdq", kind[0])) {
        PyErr_SetString(PyExc_ValueError, "kind must be 'f', 'd' or 'q'");
        return -1;
    }
    PyObject *dims = PySequence_Fast(shape, "row_shape must be a sequence of ints");
    if (dims == NULL)
        return -1;
    Slot *s = calloc(1, sizeof *s);
    if (s == NULL) {
        Py_DECREF(dims);
        PyErr_NoMemory();
        return -1;
    }
    s->ndim = (int)PySequence_Fast_GET_SIZE(dims);
    s->row_values = 1;
    for (int i = 0; i < s->ndim && i < MAX_DEPTH - 1; i++) {
        s->row_shape[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(dims, i));
        s->row_values *= s->row_shape[i];
    }
    Py_DECREF(dims);
    if (PyErr_Occurred() || s->ndim >= MAX_DEPTH - 1 || s->row_values <= 0) {
        free(s);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "row_shape must be known, positive dimensions");
        return -1;
    }
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->ready, NULL);
    s->kind = kind[0];
    s->row_bytes = (size_t)s->row_values * (s->kind == 'f' ? 4 : 8);
    s->signature_name = dup_str(signature);
    s->input_name = dup_str(input_name);
    s->input_datatype = dup_str(input_datatype);
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-model-version: %ld\r\ncontent-length: ", version);
    s->head_ok = dup_str(head);
    s->v2_open = dup_str(v2_prefix);
    if (!s->signature_name || !s->input_name || !s->input_datatype || !s->head_ok || !s->v2_open) {
        slot_unref(s);
        PyErr_NoMemory();
        return -1;
    }
    self->slot = s;
    return 0;
}

static void slot_dealloc(SlotObject *self) {
    if (self->slot)
        slot_unref(self->slot);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, double until) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wait = until - now_s();
    if (wait <= 0)
        return ETIMEDOUT;
    ts.tv_sec += (time_t)wait;
    ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return pthread_cond_timedwait(cond, lock, &ts);
}

/* A Batch of the requests in `list` (newest first), their rows copied together; NULL with a Python error after
   answering them all with the generic 500. With the GIL. */
static PyObject *make_batch(Slot *s, Req *list, Py_ssize_t count, Py_ssize_t rows) {
    BatchObject *b = PyObject_New(BatchObject, &BatchType);
    Req **reqs = malloc((size_t)count * sizeof *reqs);
    char *data = malloc((size_t)rows * s->row_bytes + 1);
    if (b == NULL || reqs == NULL || data == NULL) {
        for (Req *r = list, *next; r; r = next) { /* the clients get the generic 500 */
            next = r->next;
            char *none = NULL;
            size_t zero = 0;
            deliver(&r, &none, &zero, 1);
            req_free(r);
        }
        free(reqs);
        free(data);
        if (b != NULL) {
            b->slot = NULL;
            b->reqs = NULL;
            b->count = 0;
            b->data = NULL;
            Py_DECREF(b);
        }
        return PyErr_NoMemory();
    }
    b->slot = s;
    atomic_fetch_add(&s->refs, 1);
    b->count = count;
    b->rows = rows;
    b->exports = 0;
    b->size = (size_t)rows * s->row_bytes;
    b->reqs = reqs;
    b->data = data;
    Py_ssize_t i = count;
    for (Req *r = list; r; r = r->next)
        b->reqs[--i] = r;
    Py_BEGIN_ALLOW_THREADS
    char *at = b->data;
    for (Py_ssize_t k = 0; k < count; k++) {
        size_t n = (size_t)b->reqs[k]->rows * s->row_bytes;
        memcpy(at, b->reqs[k]->data, n);
        at += n;
        free(b->reqs[k]->data);
        b->reqs[k]->data = NULL;
    }
    Py_END_ALLOW_THREADS
    return (PyObject *)b;
}

static PyObject *slot_take(SlotObject *self, PyObject *args) {
    Py_ssize_t max_batch;
    double max_wait, timeout = -1.0, gap = 0.0, gap_cap = 0.0;
    Py_ssize_t gap_rows = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "nd|dddn:take", &max_batch, &max_wait, &timeout, &gap, &gap_cap, &gap_rows))
        return NULL;
    if (self->slot == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Slot is not initialised");
        return NULL;
    }
    Slot *s = self->slot;
    Req *list = NULL;
    Py_ssize_t count = 0, rows = 0;
    int closed = 0;
    Py_BEGIN_ALLOW_THREADS
    double until = timeout >= 0 ? now_s() + timeout : 0;
    pthread_mutex_lock(&s->lock);
    s->running = 0; /* (the lane's thread is back for more) */
    while (s->head == NULL && !s->closed) {
        if (timeout < 0)
            pthread_cond_wait(&s->ready, &s->lock);
        else if (timed_wait(&s->ready, &s->lock, until) == ETIMEDOUT)
            break;
    }
    if (s->head != NULL) {
        double started = now_s(), deadline = started + max_wait;
        for (;;) {
            /* take what fits: the first request always, then whole requests up to max_batch rows */
            while (s->head && (count == 0 || rows + s->head->rows <= max_batch)) {
                Req *r = s->head;
                s->head = r->next;
                if (s->head == NULL)
                    s->tail = NULL;
                s->queued_rows -= r->rows;
                s->queued--;
                r->next = list;
                list = r;
                count++;
                rows += r->rows;
            }
            if (s->head || rows >= max_batch || s->closed)
                break;
            if (max_wait > 0) {
                if (timed_wait(&s->ready, &s->lock, deadline) == ETIMEDOUT && s->head == NULL)
                    break;
                continue;
            }
            /* other clients are connected and the latest request came just now: more are likely on their way */
            long open = s->open ? atomic_load(s->open) : 0;
            double t = now_s();
            if (gap <= 0 || rows >= gap_rows || open <= (long)count || t - s->last_put >= gap || t - started >= gap_cap)
                break;
            double until = s->last_put + gap;
            if (until > started + gap_cap)
                until = started + gap_cap;
            s->gathering = 1;
            s->gather_count = count;
            s->gather_rows = rows;
            s->gather_limit = gap_rows;
            timed_wait(&s->ready, &s->lock, until);
            s->gathering = 0;
        }
    }
    closed = s->closed && s->head == NULL;
    s->running = count > 0;
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    if (count == 0) {
        if (closed)
            Py_RETURN_NONE;
        return Py_NewRef(Py_False); /* timed out */
    }
    return make_batch(s, list, count, rows);
}

static PyObject *slot_close(SlotObject *self, PyObject *unused) {
    if (self->slot) {
        pthread_mutex_lock(&self->slot->lock);
        self->slot->closed = 1;
        PyObject *fn = self->slot->inline_fn;
        self->slot->inline_fn = NULL;
        pthread_cond_broadcast(&self->slot->ready);
        pthread_mutex_unlock(&self->slot->lock);
        Py_XDECREF(fn);
    }
    Py_RETURN_NONE;
}

static PyObject *slot_set_inline(SlotObject *self, PyObject *fn) {
    if (self->slot == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Slot is not initialised");
        return NULL;
    }
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "set_inline needs a callable or None");
        return NULL;
    }
    pthread_mutex_lock(&self->slot->lock);
    PyObject *old = self->slot->inline_fn;
    self->slot->inline_fn = fn == Py_None ? NULL : Py_NewRef(fn);
    pthread_mutex_unlock(&self->slot->lock);
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyMethodDef slot_methods[] = {
    {"set_inline", (PyCFunction)slot_set_inline, METH_O,
     "set_inline(run | None): the front end's thread calls run(batch) itself (with the GIL) for a request of its "
     "only client connection while this version is idle."},
    {"take", (PyCFunction)slot_take, METH_VARARGS,
     "take(max_batch, max_wait, timeout=-1) -> Batch | False | None: the queued requests, whole ones up to "
     "max_batch rows (at least one), waiting without the GIL for the first (up to timeout s; False when none came) "
     "and up to max_wait s for more; None once closed and drained."},
    {"close", (PyCFunction)slot_close, METH_NOARGS,
     "close(): take no more requests (and forget set_inline's run); take() returns those queued, then None."},
    {NULL},
};

static PyTypeObject SlotType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workbench.serving._native.Slot",
    .tp_basicsize = sizeof(SlotObject),
    .tp_dealloc = (destructor)slot_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Slot(kind, row_shape, version, signature_name='', input_name='', input_datatype='', v2_prefix=''): "
              "the queue of one model version's requests (TF Serving and V2 alike; V2 answers start with v2_prefix, "
              "'{\"model_name\":...,\"outputs\":[{\"name\":...,').",
    .tp_methods = slot_methods,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)slot_init,
};

static int frontend_init(FrontendObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"listen_fd", "max_body", "keep_alive", NULL};
    int fd;
    Py_ssize_t max_body;
    double keep_alive;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ind:Frontend", names, &fd, &max_body, &keep_alive))
        return -1;
    Frontend *fe = &self->fe;
    if (fe->epoll_fd > 0) {
        PyErr_SetString(PyExc_RuntimeError, "Frontend is already initialised");
        return -1;
    }
    fe->listen_fd = fd;
    fe->max_body = (size_t)max_body;
    fe->keep_alive = keep_alive;
    fe->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    fe->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fe->handoff_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fe->epoll_fd < 0 || fe->wake_fd < 0 || fe->handoff_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &LISTEN_TAG};
    struct epoll_event wake_ev = {.events = EPOLLIN, .data.ptr = &WAKE_TAG};
    if (epoll_ctl(fe->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ||
        epoll_ctl(fe->epoll_fd, EPOLL_CTL_ADD, fe->wake_fd, &wake_ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&fe->routes_lock, NULL);
    pthread_mutex_init(&fe->done_lock, NULL);
    pthread_mutex_init(&fe->handoff_lock, NULL);
    return 0;
}

static PyObject *frontend_start(FrontendObject *self, PyObject *unused) {
    Frontend *fe = &self->fe;
    if (fe->epoll_fd <= 0 || fe->running) {
        PyErr_SetString(PyExc_RuntimeError, "the front end is not initialised, or already started");
        return NULL;
    }
    int err = pthread_create(&fe->thread, NULL, io_main, fe);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_setname_np(fe->thread, "wb-frontend");
    fe->running = 1;
    Py_RETURN_NONE;
}

static PyObject *frontend_routes(FrontendObject *self, PyObject *arg) {
    PyObject *items = PySequence_Fast(arg, "routes must be a sequence of (path bytes, Slot, 'rest' | 'v2')");
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    if (n > MAX_ROUTES) {
        Py_DECREF(items);
        PyErr_Format(PyExc_ValueError, "at most %d routes", MAX_ROUTES);
        return NULL;
    }
    Route *routes = calloc((size_t)n + 1, sizeof *routes);
    if (routes == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    Py_ssize_t made = 0;
    for (; made < n; made++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(items, made);
        char *path;
        const char *protocol;
        Py_ssize_t len;
        PyObject *slot;
        if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "y#O!s", &path, &len, &SlotType, &slot, &protocol) ||
            ((SlotObject *)slot)->slot == NULL || (strcmp(protocol, "rest") && strcmp(protocol, "v2")) ||
            (routes[made].path = malloc((size_t)len + 1)) == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "each route is (path bytes, Slot, 'rest' | 'v2')");
            break;
        }
        routes[made].protocol = protocol[0] == 'r' ? 'r' : '2';
        memcpy(routes[made].path, path, (size_t)len);
        routes[made].len = (size_t)len;
        routes[made].slot = ((SlotObject *)slot)->slot;
        routes[made].slot->open = &self->fe.open;
        atomic_fetch_add(&routes[made].slot->refs, 1);
    }
    Py_DECREF(items);
    if (made < n) {
        for (Py_ssize_t i = 0; i < made; i++) {
            free(routes[i].path);
            slot_unref(routes[i].slot);
        }
        free(routes);
        return NULL;
    }
    Frontend *fe = &self->fe;
    pthread_mutex_lock(&fe->routes_lock);
    Route *old = fe->routes;
    int old_n = fe->nroutes;
    fe->routes = routes;
    fe->nroutes = (int)n;
    pthread_mutex_unlock(&fe->routes_lock);
    for (int i = 0; i < old_n; i++) {
        free(old[i].path);
        slot_unref(old[i].slot);
    }
    free(old);
    Py_RETURN_NONE;
}

static PyObject *frontend_stop(FrontendObject *self, PyObject *args) {
    double grace = 10.0;
    if (!PyArg_ParseTuple(args, "|d:stop", &grace))
        return NULL;
    Frontend *fe = &self->fe;
    if (!fe->running)
        Py_RETURN_NONE;
    fe->grace_until = now_s() + grace;
    atomic_store(&fe->stopping, 1);
    wake(fe);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(fe->thread, NULL);
    Py_END_ALLOW_THREADS
    fe->running = 0;
    Py_RETURN_NONE;
}

static PyObject *frontend_balance(FrontendObject *self, PyObject *args) {
    Frontend *fe = &self->fe;
    Balance *b = calloc(1, sizeof *b);
    if (b == NULL)
        return PyErr_NoMemory();
    PyObject *pass_fd;
    b->inbox = -1;
    if (!PyArg_ParseTuple(args, "w*nnn(nnnnnn)O|i:balance", &b->view, &b->me, &b->width, &b->count, &b->pid,
                          &b->open, &b->draining, &b->last, &b->native, &b->took, &pass_fd, &b->inbox)) {
        free(b);
        return NULL;
    }
    Py_ssize_t cols[] = {b->pid, b->open, b->draining, b->last, b->native, b->took + b->count - 1};
    int ok = fe->running == 0 && fe->bal == NULL && PyCallable_Check(pass_fd) && b->count > 0 && b->me >= 0 &&
             b->me < b->count && b->width > 0 && b->view.len >= (Py_ssize_t)(b->count * b->width * 8);
    for (int i = 0; i < 6; i++)
        ok = ok && cols[i] >= 0 && cols[i] < b->width;
    if (!ok) {
        PyBuffer_Release(&b->view);
        free(b);
        PyErr_SetString(PyExc_ValueError, "balance(table, me, width, count, (pid, open, draining, last, native, "
                                          "took), pass_fd, inbox=-1): a table of count rows of width int64, before "
                                          "start()");
        return NULL;
    }
    if (b->inbox >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &INBOX_TAG};
        if (epoll_ctl(fe->epoll_fd, EPOLL_CTL_ADD, b->inbox, &ev) < 0) {
            PyBuffer_Release(&b->view);
            free(b);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    b->t = (volatile int64_t *)b->view.buf;
    b->pass_fd = Py_NewRef(pass_fd);
    fe->bal = b;
    bal_count(fe);
    Py_RETURN_NONE;
}

static PyObject *frontend_pass_idle(FrontendObject *self, PyObject *unused) {
    Frontend *fe = &self->fe;
    atomic_store(&fe->pass_wanted, 1);
    wake(fe);
    Py_RETURN_NONE;
}

static PyObject *frontend_handoffs(FrontendObject *self, PyObject *unused) {
    Frontend *fe = &self->fe;
    uint64_t count;
    ssize_t r = read(fe->handoff_fd, &count, sizeof count);
    (void)r;
    pthread_mutex_lock(&fe->handoff_lock);
    Handoff *h = fe->handoff_head;
    fe->handoff_head = fe->handoff_tail = NULL;
    pthread_mutex_unlock(&fe->handoff_lock);
    PyObject *list = PyList_New(0);
    while (h) {
        Handoff *next = h->next;
        PyObject *item = list ? Py_BuildValue("(iy#)", h->fd, h->data ? h->data : "", (Py_ssize_t)h->len) : NULL;
        if (item == NULL || PyList_Append(list, item) < 0)
            close(h->fd); /* (out of memory: that client's connection closes) */
        Py_XDECREF(item);
        free(h->data);
        free(h);
        h = next;
    }
    return list;
}

static PyObject *frontend_handoff_fd(FrontendObject *self, void *closure) {
    return PyLong_FromLong(self->fe.handoff_fd);
}

static PyGetSetDef frontend_getset[] = {
    {"handoff_fd", (getter)frontend_handoff_fd, NULL,
     "an eventfd, readable while connections wait for the Python server (take them with handoffs())", NULL},
    {NULL},
};

static PyObject *frontend_stats(FrontendObject *self, PyObject *unused) {
    Frontend *fe = &self->fe;
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l}", "open", atomic_load(&fe->open), "handed_off",
                         atomic_load(&fe->handed_off), "served", atomic_load(&fe->served), "passed",
                         atomic_load(&fe->passed), "adopted", atomic_load(&fe->adopted));
}

static void frontend_dealloc(FrontendObject *self) {
    Frontend *fe = &self->fe;
    if (fe->running) {
        fe->grace_until = now_s();
        atomic_store(&fe->stopping, 1);
        wake(fe);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(fe->thread, NULL);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < fe->nroutes; i++) {
        free(fe->routes[i].path);
        slot_unref(fe->routes[i].slot);
    }
    free(fe->routes);
    free(fe->scratch.p);
    if (fe->epoll_fd > 0)
        close(fe->epoll_fd);
    if (fe->wake_fd > 0)
        close(fe->wake_fd);
    for (Handoff *h = fe->handoff_head, *next; h; h = next) {
        next = h->next;
        close(h->fd);
        free(h->data);
        free(h);
    }
    if (fe->handoff_fd > 0)
        close(fe->handoff_fd);
    if (fe->bal) {
        fe->bal->t[fe->bal->me * fe->bal->width + fe->bal->native] = 0;
        PyBuffer_Release(&fe->bal->view);
        Py_DECREF(fe->bal->pass_fd);
        free(fe->bal);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef frontend_methods[] = {
    {"start", (PyCFunction)frontend_start, METH_NOARGS, "start(): accept and serve on the front end's thread."},
    {"routes", (PyCFunction)frontend_routes, METH_O,
     "routes([(path, Slot, 'rest' | 'v2'), ...]): the requests served here from now on (the whole table, "
     "replaced at once)."},
    {"stop", (PyCFunction)frontend_stop, METH_VARARGS,
     "stop(grace=10): stop accepting, close idle connections, wait up to grace s for answers in hand, close the "
     "rest; returns when the thread has ended."},
    {"handoffs", (PyCFunction)frontend_handoffs, METH_NOARGS,
     "handoffs() -> [(fd, data_read)]: the connections handed to the Python server since the last call (each "
     "its own to serve from now on, with what was read from it)."},
    {"stats", (PyCFunction)frontend_stats, METH_NOARGS,
     "stats() -> {'open', 'handed_off', 'served', 'passed', 'adopted'}: connections open here, handed to Python, "
     "requests answered, connections passed to other processes and taken from them."},
    {"balance", (PyCFunction)frontend_balance, METH_VARARGS,
     "balance(table, me, width, count, (pid, open, draining, last, native, took), pass_fd, inbox=-1): several "
     "processes serve the port; table is their shared int64 rows (see workers.Balancer), this one's row me, whose "
     "native column this front end keeps; pass_fd(fd) -> bool sends an idle connection to another process; the "
     "connections others send arrive on the datagram socket inbox (each counted in row me's took columns). Before "
     "start()."},
    {"pass_idle", (PyCFunction)frontend_pass_idle, METH_NOARGS,
     "pass_idle(): pass on every idle connection the balance asks to move (as when stepping aside to load)."},
    {NULL},
};

static PyTypeObject FrontendType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workbench.serving._native.Frontend",
    .tp_basicsize = sizeof(FrontendObject),
    .tp_dealloc = (destructor)frontend_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Frontend(listen_fd, max_body, keep_alive): serves the predict requests of registered routes from a "
              "thread of its own and hands every other connection to the Python server (handoffs()).",
    .tp_methods = frontend_methods,
    .tp_getset = frontend_getset,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)frontend_init,
};

static PyObject *py_format_f32(PyObject *self, PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred())
        return NULL;
    char out[40];
    int n = format_f32((float)x, out);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "not a finite number");
        return NULL;
    }
    return PyBytes_FromStringAndSize(out, n);
}

static PyMethodDef frontend_functions[] = {
    {"format_f32", py_format_f32, METH_O, "format_f32(x) -> bytes: float32(x) as the front end writes it in JSON."},
    {NULL},
};

/* Called by PyInit__native: adds Frontend, Slot, Batch and format_f32 to the module. */
int frontend_add_to(PyObject *module) {
    decode_init();
    if (PyType_Ready(&SlotType) < 0 || PyType_Ready(&BatchType) < 0 || PyType_Ready(&FrontendType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Slot", (PyObject *)&SlotType) < 0 ||
        PyModule_AddObjectRef(module, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddObjectRef(module, "Frontend", (PyObject *)&FrontendType) < 0)
        return -1;
    return PyModule_AddFunctions(module, frontend_functions);
}
