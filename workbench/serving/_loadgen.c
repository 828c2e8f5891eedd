/* A closed-loop HTTP load generator in C (workbench.serving._native.closed_loop), for the benchmarks.
 *
 * closed_loop(host, port, request, concurrency, duration) opens `concurrency` keep-alive connections and on each
 * sends `request` (a whole HTTP/1.1 request), waits for the answer, and sends it again, for `duration` seconds,
 * on one thread without the GIL. It returns (latencies, statuses, errors, seconds): each answer's latency in
 * seconds (packed doubles) and status (packed int32), and the connections lost. A benchmark client in Python
 * spends 10-40 us of CPU per request; this one a few, which on a machine it shares with the server it measures
 * is CPU the server gets back.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    int fd;
    size_t sent;     /* bytes of the request written */
    char *in;        /* answer bytes so far */
    size_t len, cap;
    double due;      /* when the request went out */
} Client;

typedef struct {
    double *lat;
    int *status;
    size_t n, cap;
    long errors;
} Results;

static int record(Results *r, double latency, int status) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 65536;
        double *lat = realloc(r->lat, cap * sizeof *lat);
        if (lat == NULL)
            return 0;
        r->lat = lat;
        int *st = realloc(r->status, cap * sizeof *st);
        if (st == NULL)
            return 0;
        r->status = st;
        r->cap = cap;
    }
    r->lat[r->n] = latency;
    r->status[r->n++] = status;
    return 1;
}

static int dial(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)addr, sizeof *addr) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Write what is left of the request; 0: the connection failed. */
static int push(Client *c, const char *req, size_t req_len) {
    while (c->sent < req_len) {
        ssize_t n = send(c->fd, req + c->sent, req_len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    return 1;
}

/* The length of the whole answer at the front of c->in once it is all there (0: not yet, -1: unreadable), and its
   status. */
static long answer_length(Client *c, int *status) {
    char *end = c->len >= 4 ? memmem(c->in, c->len, "\r\n\r\n", 4) : NULL;
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - c->in) + 4;
    if (head < 13 || memcmp(c->in, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(c->in + 9);
    long length = -1;
    for (char *p = c->in; p + 15 < end; p++) {
        if ((p[0] == '\n') && strncasecmp(p + 1, "content-length:", 15) == 0) {
            length = atol(p + 16);
            break;
        }
    }
    if (length < 0)
        return *status == 100 ? (long)head : -1;
    return c->len >= head + (size_t)length ? (long)(head + (size_t)length) : 0;
}

static PyObject *closed_loop(PyObject *self, PyObject *args) {
    const char *host;
    int port, concurrency;
    Py_buffer request;
    double duration;
    if (!PyArg_ParseTuple(args, "siy*id:closed_loop", &host, &port, &request, &concurrency, &duration))
        return NULL;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (concurrency < 1 || concurrency > 4096 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        PyBuffer_Release(&request);
        PyErr_SetString(PyExc_ValueError, "closed_loop needs an IPv4 address and 1..4096 connections");
        return NULL;
    }
    Results res = {0};
    int failed = 0;
    double started = 0, ended = 0;
    Client *clients = calloc((size_t)concurrency, sizeof *clients);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    const char *req = request.buf;
    size_t req_len = (size_t)request.len;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; clients && i < concurrency && !failed; i++) {
        Client *c = &clients[i];
        c->fd = dial(&addr);
        if (c->fd < 0) {
            failed = errno ? errno : ECONNREFUSED;
            break;
        }
        nonblocking(c->fd);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    started = mono();
    double stop_at = started + duration;
    for (int i = 0; clients && !failed && i < concurrency; i++) {
        clients[i].due = started;
        if (!push(&clients[i], req, req_len))
            res.errors++;
    }
    struct epoll_event events[512];
    while (!failed && clients) {
        double now = mono();
        if (now >= stop_at)
            break;
        int n = epoll_wait(ep, events, 512, (int)((stop_at - now) * 1000) + 1);
        for (int k = 0; k < n; k++) {
            Client *c = events[k].data.ptr;
            if (c->fd < 0)
                continue;
            if (c->sent < req_len && !push(c, req, req_len)) {
                res.errors++;
                goto lost;
            }
            for (;;) {
                if (c->cap - c->len < 65536) {
                    size_t cap = c->cap ? c->cap * 2 : 131072;
                    char *in = realloc(c->in, cap);
                    if (in == NULL)
                        goto lost;
                    c->in = in;
                    c->cap = cap;
                }
                ssize_t got = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
                if (got > 0) {
                    c->len += (size_t)got;
                    continue;
                }
                if (got < 0 && errno == EINTR)
                    continue;
                if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                res.errors++; /* closed or reset with a request in flight */
                goto lost;
            }
            for (;;) {
                int status = 0;
                long whole = answer_length(c, &status);
                if (whole < 0) {
                    res.errors++;
                    goto lost;
                }
                if (whole == 0)
                    break;
                memmove(c->in, c->in + whole, c->len - (size_t)whole);
                c->len -= (size_t)whole;
                if (status == 100)
                    continue;
                double t = mono();
                if (!record(&res, t - c->due, status)) {
                    failed = ENOMEM;
                    break;
                }
                c->due = t;
                c->sent = 0;
                if (t < stop_at && !push(c, req, req_len)) {
                    res.errors++;
                    goto lost;
                }
            }
            continue;
        lost:
            close(c->fd);
            c->fd = dial(&addr); /* a fresh connection in its place */
            c->len = 0;
            c->sent = 0;
            if (c->fd >= 0) {
                nonblocking(c->fd);
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                c->due = mono();
                push(c, req, req_len);
            }
        }
    }
    ended = mono();
    for (int i = 0; clients && i < concurrency; i++) {
        if (clients[i].fd >= 0)
            close(clients[i].fd);
        free(clients[i].in);
    }
    Py_END_ALLOW_THREADS
    free(clients);
    if (ep >= 0)
        close(ep);
    PyBuffer_Release(&request);
    if (failed || clients == NULL) {
        free(res.lat);
        free(res.status);
        errno = failed ? failed : ENOMEM;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = Py_BuildValue("(y#y#ld)", (char *)res.lat, (Py_ssize_t)(res.n * sizeof(double)), (char *)res.status,
                                  (Py_ssize_t)(res.n * sizeof(int)), res.errors, ended - started);
    free(res.lat);
    free(res.status);
    return out;
}

static PyMethodDef loadgen_functions[] = {
    {"closed_loop", closed_loop, METH_VARARGS,
     "closed_loop(host, port, request, concurrency, duration) -> (latencies, statuses, errors, seconds): "
     "`concurrency` keep-alive connections each sending `request` again as soon as it is answered, for "
     "`duration` s, without the GIL; latencies as packed float64 s, statuses as packed int32."},
    {NULL},
};

/* Called by PyInit__native. */
int loadgen_add_to(PyObject *module) { return PyModule_AddFunctions(module, loadgen_functions); }
