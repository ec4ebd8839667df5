/*
 * userfaultfd microbenchmark: measures the local stages of a postcopy page fault
 * (delivery to the fault thread, optional request/response to a page server,
 * placement with UFFDIO_COPY/UFFDIO_ZEROPAGE, wake-up of the faulting thread) the way
 * QEMU's destination does them. All timing loops run here, in C, with the GIL released.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "uffd_bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW /* headers older than Linux 6.1 */
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

#define SMALL_PAGE 4096ULL
#define HUGE_PAGE (2ULL << 20)
#define UFFD_MSG_BATCH 16         /* uffd messages taken per read() */
#define MAX_THREADS 256
#define SERVER_POLL_MS 50         /* spc_serve notices *stop within about this */
#define SERVER_SEND_TIMEOUT_MS 50 /* a blocked send re-checks *stop this often */
#define MAX_CLIENTS 64

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* An anonymous buffer written once, so later reads and copies from it never fault. */
static char *map_prefaulted(size_t len)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    memset(p, 0x5a, len);
    return p;
}

/* ---------------------------------------------------------------- userfaultfd set-up */

/* Like QEMU: the userfaultfd(2) system call, falling back to /dev/userfaultfd (Linux 6.1+). */
static int uffd_open(int nonblock, struct spc_stats *st, char *err, size_t errlen)
{
    int flags = O_CLOEXEC | (nonblock ? O_NONBLOCK : 0);
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd >= 0) {
        st->open_method = SPC_OPEN_SYSCALL;
        return fd;
    }
    st->syscall_errno = errno;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        if (fd < 0)
            st->dev_errno = errno;
        close(dev);
        if (fd >= 0) {
            st->open_method = SPC_OPEN_DEV;
            return fd;
        }
    } else {
        st->dev_errno = errno;
    }
    set_err(err, errlen, SPC_E_UFFD_OPEN,
            "cannot open a userfaultfd: userfaultfd(2): %s; /dev/userfaultfd: %s",
            strerror((int)st->syscall_errno), strerror((int)st->dev_errno));
    return -1;
}

/* UFFDIO_API handshake; asks for the faulting thread's id in every message. */
static int uffd_handshake(int fd, struct spc_stats *st, char *err, size_t errlen)
{
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_THREAD_ID};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        st->sys_errno = errno;
        return set_err(err, errlen, SPC_E_SYSTEM,
                       "UFFDIO_API handshake failed (kernel without UFFD_FEATURE_THREAD_ID?): %s",
                       strerror(errno));
    }
    st->features = api.features;
    st->ioctls = api.ioctls;
    return SPC_OK;
}

/*
 * The destination region: missing pages of page_bytes, registered in MISSING mode.
 * The memory its pages will come from is first made resident once (a populated mapping,
 * unmapped at once: the allocator hands the same, now backed, pages out again). In a
 * virtual machine the host backs guest memory on first touch, and that one-time cost (ms
 * per 2 MiB page) would otherwise land in the placement stage.
 */
static int map_region(int fd, uint64_t page_bytes, int64_t npages, char **base,
                      struct spc_stats *st, char *err, size_t errlen)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
    if (page_bytes == HUGE_PAGE) {
        flags |= MAP_HUGETLB | MAP_HUGE_2MB;
        st->hugepages_needed = npages;
    }
    size_t len = (size_t)npages * page_bytes;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_POPULATE, -1, 0);
    if (p != MAP_FAILED) {
        munmap(p, len);
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    }
    if (p == MAP_FAILED) {
        st->sys_errno = errno;
        if (page_bytes == HUGE_PAGE && errno == ENOMEM)
            return set_err(err, errlen, SPC_E_HUGEPAGES,
                           "mmap(MAP_HUGETLB) of %lld 2 MiB pages failed: not enough free "
                           "huge pages",
                           (long long)npages);
        return set_err(err, errlen, SPC_E_SYSTEM, "mmap of %lld pages of %llu bytes: %s",
                       (long long)npages, (unsigned long long)page_bytes, strerror(errno));
    }
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)p, .len = len},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        st->sys_errno = errno;
        munmap(p, len);
        return set_err(err, errlen, SPC_E_SYSTEM, "UFFDIO_REGISTER (missing mode): %s",
                       strerror(errno));
    }
    st->range_ioctls = reg.ioctls;
    *base = p;
    return SPC_OK;
}

/*
 * UFFDIO_COPY (or UFFDIO_ZEROPAGE) of len bytes WITHOUT waking the waiters: QEMU copies and
 * wakes in one ioctl, but then a woken thread on the same CPU preempts the fault thread
 * inside the ioctl and runs on before the ioctl returns, so the placement time would absorb
 * the faulting thread's run and "wake" could end before "place". The caller wakes with
 * UFFDIO_WAKE (one extra system call, counted in the wake stage). EAGAIN (the address space
 * is changing, or a partial copy) is retried with what is left until `deadline`. Returns
 * 0, or the errno of the failure (EEXIST: the page is already there).
 */
static int place_range(int fd, uint64_t dst, uint64_t src, uint64_t len, int zeropage,
                       int64_t deadline)
{
    for (;;) {
        int64_t done;
        if (zeropage) {
            struct uffdio_zeropage z = {.range = {.start = dst, .len = len},
                                        .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE};
            if (ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0)
                return 0;
            done = z.zeropage;
        } else {
            struct uffdio_copy c = {
                .dst = dst, .src = src, .len = len, .mode = UFFDIO_COPY_MODE_DONTWAKE};
            if (ioctl(fd, UFFDIO_COPY, &c) == 0)
                return 0;
            done = c.copy;
        }
        int e = errno;
        if (e != EAGAIN && e != EINTR)
            return e;
        if (done > 0) { /* partial: continue after what was placed */
            dst += (uint64_t)done;
            src += (uint64_t)done;
            len -= (uint64_t)done;
        }
        if (now_ns() > deadline)
            return ETIMEDOUT;
    }
}

/* --------------------------------------------------------------------- one run */

struct msgrec {
    int64_t page, thread, t_read, t_req_start, t_req_end, t_net_end, t_place_start,
        t_place_end, eexist;
};

struct run;

struct faulter {
    struct run *r;
    int index;
    pthread_t th;
};

struct run {
    const struct spc_config *cfg;
    struct spc_stats *st;
    char *err;
    size_t errlen;
    int uffd;
    char *base;          /* the registered region */
    char *src;           /* UFFDIO_COPY source page, pre-faulted */
    int64_t npages;      /* warm-up + measured pages */
    int64_t ntouch;      /* touches: npages, or npages * threads with shared pages */
    int64_t *t_touch;    /* per touch slot */
    int64_t *t_resume;   /* per touch slot */
    int64_t *own;        /* touch slot -> index of its uffd message, or -1 */
    int64_t *placer;     /* page -> index of the message that placed it, or -1 */
    struct msgrec *msgs; /* in the order handled; at most one per touch */
    int64_t nmsgs;
    int *tids;           /* faulting thread index -> kernel thread id */
    int handler_cpu;     /* -1: no pinning */
    int *faulter_cpu;    /* per faulting thread, -1: no pinning */
    pthread_t handler;
    struct faulter *faulters;
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* handler ready or exited, faulters all done, an error */
    pthread_cond_t bar_cv; /* the warm-up barrier */
    int stop;              /* atomic: wind down */
    int handler_ready, handler_exited, faulters_done, warm_arrived, warm_released;
    int64_t progress; /* atomic: reads, messages handled, faulters finished */
    int code;         /* first error wins */
};

static int stopped(struct run *r)
{
    return __atomic_load_n(&r->stop, __ATOMIC_RELAXED);
}

static int failed(struct run *r)
{
    return __atomic_load_n(&r->code, __ATOMIC_RELAXED) != SPC_OK;
}

/* Records the first failure (later ones are consequences) and tells everyone to stop. */
static void run_fail(struct run *r, int code, int errnum, const char *fmt, ...)
{
    pthread_mutex_lock(&r->mu);
    if (r->code == SPC_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errlen, fmt, ap);
        va_end(ap);
        __atomic_store_n(&r->code, code, __ATOMIC_RELAXED);
        r->st->sys_errno = errnum;
    }
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&r->cv);
    pthread_cond_broadcast(&r->bar_cv);
    pthread_mutex_unlock(&r->mu);
}

static void touch(struct run *r, int64_t page, int64_t slot)
{
    volatile char *p = r->base + page * (int64_t)r->cfg->page_bytes;
    int64_t t0 = now_ns();
    (void)*p;
    int64_t t1 = now_ns();
    r->t_touch[slot] = t0;
    r->t_resume[slot] = t1;
}

/* Touches pages [from, to): all with shared pages, else those with page % threads == index. */
static void touch_range(struct faulter *f, int64_t from, int64_t to)
{
    struct run *r = f->r;
    int64_t threads = r->cfg->threads;
    if (r->cfg->shared_pages) {
        for (int64_t p = from; p < to && !stopped(r); p++)
            touch(r, p, f->index * r->npages + p);
        return;
    }
    int64_t first = from + ((f->index - from % threads) % threads + threads) % threads;
    for (int64_t p = first; p < to && !stopped(r); p += threads)
        touch(r, p, p);
}

static void *faulter_main(void *arg)
{
    struct faulter *f = arg;
    struct run *r = f->r;
    __atomic_store_n(&r->tids[f->index], (int)syscall(SYS_gettid), __ATOMIC_RELEASE);

    touch_range(f, 0, r->cfg->warmup);
    /* Barrier: the measured phase starts when every warm-up touch has resumed. */
    pthread_mutex_lock(&r->mu);
    if (++r->warm_arrived == r->cfg->threads) {
        r->st->t_start = now_ns();
        r->warm_released = 1;
        pthread_cond_broadcast(&r->bar_cv);
    }
    while (!r->warm_released && !stopped(r))
        pthread_cond_wait(&r->bar_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);

    touch_range(f, r->cfg->warmup, r->npages);

    int64_t t_end = now_ns();
    pthread_mutex_lock(&r->mu);
    if (t_end > r->st->t_end)
        r->st->t_end = t_end;
    __atomic_add_fetch(&r->progress, 1, __ATOMIC_RELAXED);
    if (++r->faulters_done == r->cfg->threads)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Sends or receives exactly len bytes on the page-server socket (SO_*TIMEO bound each call). */
static int server_io(struct run *r, int sending, void *buf, size_t len)
{
    char *p = buf;
    int fd = r->cfg->server_fd;
    long long served = (long long)r->st->pages_served;
    while (len > 0) {
        ssize_t n = sending ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            /* A stop after success lets the exchange finish; after a failure it ends it. */
            if (failed(r))
                return -1;
            continue;
        }
        if (n == 0 || errno == ECONNRESET || errno == EPIPE) {
            /* An orderly close (recv returns 0) or an abortive one (unread data left). */
            run_fail(r, SPC_E_SERVER, n == 0 ? 0 : errno,
                     "page server closed the connection after %lld pages%s", served,
                     n == 0 ? "" : " (connection reset)");
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            run_fail(r, SPC_E_SERVER, errno,
                     "page server timed out: no progress %s within %d ms (after %lld pages)",
                     sending ? "sending a request" : "receiving a page", r->cfg->timeout_ms,
                     served);
        } else {
            run_fail(r, SPC_E_SERVER, errno,
                     "page server connection failed while %s after %lld pages: %s",
                     sending ? "sending a request" : "receiving a page", served,
                     strerror(errno));
        }
        return -1;
    }
    return 0;
}

static int thread_index(struct run *r, int tid)
{
    for (int i = 0; i < r->cfg->threads; i++)
        if (__atomic_load_n(&r->tids[i], __ATOMIC_ACQUIRE) == tid)
            return i;
    return -1;
}

/* One uffd message: (network hop), place the page, record the stamps. */
static int handle_msg(struct run *r, const struct uffd_msg *m, int64_t t_read)
{
    const struct spc_config *c = r->cfg;
    if (m->event != UFFD_EVENT_PAGEFAULT) {
        run_fail(r, SPC_E_SYSTEM, 0, "unexpected userfaultfd event %u", (unsigned)m->event);
        return -1;
    }
    uint64_t addr = m->arg.pagefault.address;
    uint64_t start = (uintptr_t)r->base;
    if (addr < start || addr >= start + (uint64_t)r->npages * c->page_bytes) {
        run_fail(r, SPC_E_SYSTEM, 0, "fault at %#llx outside the registered region",
                 (unsigned long long)addr);
        return -1;
    }
    int64_t page = (int64_t)((addr - start) / c->page_bytes);
    int thread = thread_index(r, (int)m->arg.pagefault.feat.ptid);
    if (thread < 0) {
        run_fail(r, SPC_E_SYSTEM, 0, "fault from thread id %u, not a faulting thread",
                 (unsigned)m->arg.pagefault.feat.ptid);
        return -1;
    }
    int64_t slot = c->shared_pages ? thread * r->npages + page : page;
    if (r->own[slot] >= 0) {
        /* Impossible unless a fault was retried: the faulting threads block all signals. */
        run_fail(r, SPC_E_SYSTEM, 0, "second fault message for thread %d, page %lld", thread,
                 (long long)page);
        return -1;
    }
    struct msgrec *rec = &r->msgs[r->nmsgs];
    rec->page = page;
    rec->thread = thread;
    rec->t_read = t_read;

    uint64_t dst = start + (uint64_t)page * c->page_bytes;
    if (c->server_fd >= 0) {
        uint64_t request = (uint64_t)page;
        rec->t_req_start = now_ns();
        if (server_io(r, 1, &request, sizeof request))
            return -1;
        rec->t_req_end = now_ns();
        if (server_io(r, 0, r->src, c->page_bytes))
            return -1;
        rec->t_net_end = now_ns();
        r->st->pages_served++;
    }
    rec->t_place_start = now_ns();
    int e = place_range(r->uffd, dst, (uintptr_t)r->src, c->page_bytes, c->zeropage,
                        rec->t_place_start + c->timeout_ms * 1000000LL);
    rec->t_place_end = now_ns();
    if (e == EEXIST) {
        rec->eexist = 1; /* a racing duplicate: the page is there; wake as usual */
    } else if (e == ETIMEDOUT) {
        run_fail(r, SPC_E_TIMEOUT, EAGAIN, "%s kept returning EAGAIN for %d ms",
                 c->zeropage ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", c->timeout_ms);
        return -1;
    } else if (e != 0) {
        run_fail(r, SPC_E_SYSTEM, e, "%s of page %lld: %s",
                 c->zeropage ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", (long long)page, strerror(e));
        return -1;
    }
    /* Wake whoever waits on the page (harmless if nobody does). */
    struct uffdio_range range = {.start = dst, .len = c->page_bytes};
    if (ioctl(r->uffd, UFFDIO_WAKE, &range) < 0) {
        run_fail(r, SPC_E_SYSTEM, errno, "UFFDIO_WAKE: %s", strerror(errno));
        return -1;
    }
    r->own[slot] = r->nmsgs;
    if (rec->eexist)
        r->st->eexist++;
    else {
        r->placer[page] = r->nmsgs;
        r->st->placed++;
    }
    __atomic_store_n(&r->nmsgs, r->nmsgs + 1, __ATOMIC_RELAXED); /* read by watch() */
    r->st->messages++;
    __atomic_add_fetch(&r->progress, 1, __ATOMIC_RELAXED);
    return 0;
}

/* The fault thread: wait for messages (blocking read, poll, or spinning), handle each. */
static void handler_loop(struct run *r)
{
    const struct spc_config *c = r->cfg;
    struct uffd_msg batch[UFFD_MSG_BATCH];
    int64_t timeout_ns = c->timeout_ms * 1000000LL;
    int64_t last = now_ns();
    unsigned spins = 0;
    while (!stopped(r)) {
        if (c->mode == 1) {
            struct pollfd p = {.fd = r->uffd, .events = POLLIN};
            int pr = poll(&p, 1, c->timeout_ms);
            if (pr < 0 && errno == EINTR)
                continue;
            if (pr < 0) {
                run_fail(r, SPC_E_SYSTEM, errno, "poll on the userfaultfd: %s", strerror(errno));
                return;
            }
            if (pr == 0) {
                run_fail(r, SPC_E_TIMEOUT, 0, "no userfaultfd message within %d ms",
                         c->timeout_ms);
                return;
            }
        }
        ssize_t n = read(r->uffd, batch, sizeof batch);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                /* Busy polling: look at the clock only now and then. */
                if (c->mode == 2 && (++spins & 1023) == 0 && now_ns() - last > timeout_ns) {
                    run_fail(r, SPC_E_TIMEOUT, 0, "no userfaultfd message within %d ms",
                             c->timeout_ms);
                    return;
                }
                continue;
            }
            run_fail(r, SPC_E_SYSTEM, errno, "read from the userfaultfd: %s", strerror(errno));
            return;
        }
        int64_t t_read = now_ns();
        last = t_read;
        __atomic_add_fetch(&r->progress, 1, __ATOMIC_RELAXED);
        for (size_t i = 0; i < (size_t)n / sizeof batch[0]; i++)
            if (handle_msg(r, &batch[i], t_read))
                return;
    }
}

static void *handler_main(void *arg)
{
    struct run *r = arg;
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);

    pthread_mutex_lock(&r->mu);
    r->handler_ready = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);

    handler_loop(r);

    pthread_mutex_lock(&r->mu);
    r->handler_exited = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* SIGUSR2 interrupts the fault thread's read()/poll(): a no-op handler without SA_RESTART,
 * installed while any run is active and then restored. */
static pthread_mutex_t sig_mu = PTHREAD_MUTEX_INITIALIZER;
static int sig_users;
static struct sigaction sig_saved;

static void sig_noop(int sig)
{
    (void)sig;
}

static int sig_acquire(void)
{
    int rc = 0;
    pthread_mutex_lock(&sig_mu);
    if (sig_users == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = sig_noop;
        sigemptyset(&sa.sa_mask);
        rc = sigaction(SIGUSR2, &sa, &sig_saved);
    }
    if (rc == 0)
        sig_users++;
    pthread_mutex_unlock(&sig_mu);
    return rc;
}

static void sig_release(void)
{
    pthread_mutex_lock(&sig_mu);
    if (--sig_users == 0)
        sigaction(SIGUSR2, &sig_saved, NULL);
    pthread_mutex_unlock(&sig_mu);
}

static void deadline_in(struct timespec *ts, int64_t ns)
{
    int64_t t = now_ns() + ns;
    ts->tv_sec = t / 1000000000LL;
    ts->tv_nsec = t % 1000000000LL;
}

/* Sets stop and interrupts the fault thread until it has left its loop, then joins it. */
static void stop_handler(struct run *r)
{
    pthread_mutex_lock(&r->mu);
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&r->bar_cv);
    while (!r->handler_exited) {
        /* Repeated: a signal that lands just before read() is entered is lost. */
        pthread_kill(r->handler, SIGUSR2);
        struct timespec ts;
        deadline_in(&ts, 10000000LL);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->handler, NULL);
}

/*
 * Waits until the faulting threads finish, the handler fails, or nothing moves for two
 * whole timeout_ms periods: the handler's own waits (poll, page-server sockets) are bounded
 * by one period and report themselves first; this catches the unbounded ones (a blocking
 * read) within two.
 */
static void watch(struct run *r)
{
    int64_t timeout_ns = r->cfg->timeout_ms * 1000000LL;
    pthread_mutex_lock(&r->mu);
    int64_t seen = __atomic_load_n(&r->progress, __ATOMIC_RELAXED);
    int idle = 0;
    struct timespec ts;
    deadline_in(&ts, timeout_ns);
    while (r->faulters_done < r->cfg->threads && r->code == SPC_OK && !r->handler_exited) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != ETIMEDOUT)
            continue;
        int64_t now = __atomic_load_n(&r->progress, __ATOMIC_RELAXED);
        idle = now == seen ? idle + 1 : 0;
        if (idle == 2) {
            pthread_mutex_unlock(&r->mu);
            run_fail(r, SPC_E_TIMEOUT, 0,
                     "no progress for %d ms (%lld faults handled, %lld pages in all)",
                     2 * r->cfg->timeout_ms, (long long)__atomic_load_n(&r->nmsgs, __ATOMIC_RELAXED),
                     (long long)r->npages);
            return;
        }
        seen = now;
        deadline_in(&ts, timeout_ns);
    }
    pthread_mutex_unlock(&r->mu);
}

static int check_config(const struct spc_config *c, char *err, size_t errlen)
{
    if (c->page_bytes != SMALL_PAGE && c->page_bytes != HUGE_PAGE)
        return set_err(err, errlen, SPC_E_CONFIG, "page_bytes %llu: use 4096 or 2097152",
                       (unsigned long long)c->page_bytes);
    if (c->samples < 1 || c->warmup < 0)
        return set_err(err, errlen, SPC_E_CONFIG, "samples must be >= 1 and warmup >= 0");
    if (c->threads < 1 || c->threads > MAX_THREADS)
        return set_err(err, errlen, SPC_E_CONFIG, "threads %d: 1..%d", c->threads,
                       MAX_THREADS);
    if (c->mode < 0 || c->mode > 2 || c->affinity < 0 || c->affinity > 2)
        return set_err(err, errlen, SPC_E_CONFIG, "mode %d / affinity %d: 0, 1 or 2", c->mode,
                       c->affinity);
    if (c->timeout_ms < 1)
        return set_err(err, errlen, SPC_E_CONFIG, "timeout_ms must be >= 1");
    if (c->zeropage && c->page_bytes == HUGE_PAGE)
        return set_err(err, errlen, SPC_E_CONFIG,
                       "UFFDIO_ZEROPAGE does not exist for huge pages");
    int64_t pages = c->samples + c->warmup;
    int64_t rows = c->shared_pages ? pages * c->threads : pages;
    if (c->capacity < rows)
        return set_err(err, errlen, SPC_E_CONFIG, "capacity %lld < %lld rows",
                       (long long)c->capacity, (long long)rows);
    return SPC_OK;
}

/* CPU choice: 1 = everything on the first usable CPU; 2 = handler there, faulters on the rest. */
static int pick_cpus(struct run *r)
{
    const struct spc_config *c = r->cfg;
    r->handler_cpu = -1;
    for (int i = 0; i < c->threads; i++)
        r->faulter_cpu[i] = -1;
    if (c->affinity == 0)
        return SPC_OK;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) {
        r->st->sys_errno = errno;
        return set_err(r->err, r->errlen, SPC_E_SYSTEM, "sched_getaffinity: %s",
                       strerror(errno));
    }
    int cpus[CPU_SETSIZE];
    int n = 0;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set))
            cpus[n++] = i;
    if (c->affinity == 2 && n < 2)
        return set_err(r->err, r->errlen, SPC_E_CONFIG,
                       "affinity 'different' needs 2 CPUs; only %d is usable by this process",
                       n);
    r->handler_cpu = cpus[0];
    for (int i = 0; i < c->threads; i++)
        r->faulter_cpu[i] = c->affinity == 1 ? cpus[0] : cpus[1 + i % (n - 1)];
    return SPC_OK;
}

static int start_thread(struct run *r, pthread_t *th, int cpu, void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (cpu >= 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        pthread_attr_setaffinity_np(&attr, sizeof one, &one);
    }
    int e = pthread_create(th, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    if (e) {
        r->st->sys_errno = e;
        return set_err(r->err, r->errlen, SPC_E_SYSTEM, "pthread_create: %s", strerror(e));
    }
    return SPC_OK;
}

/* Allocates the bookkeeping and writes every byte so no first-touch fault lands in a stage. */
static int alloc_run(struct run *r)
{
    const struct spc_config *c = r->cfg;
    r->t_touch = malloc(r->ntouch * sizeof(int64_t));
    r->t_resume = malloc(r->ntouch * sizeof(int64_t));
    r->own = malloc(r->ntouch * sizeof(int64_t));
    r->placer = malloc(r->npages * sizeof(int64_t));
    r->msgs = malloc(r->ntouch * sizeof(struct msgrec));
    r->tids = calloc(c->threads, sizeof(int));
    r->faulter_cpu = calloc(c->threads, sizeof(int));
    r->faulters = calloc(c->threads, sizeof(struct faulter));
    if (!r->t_touch || !r->t_resume || !r->own || !r->placer || !r->msgs || !r->tids ||
        !r->faulter_cpu || !r->faulters) {
        r->st->sys_errno = ENOMEM;
        return set_err(r->err, r->errlen, SPC_E_SYSTEM, "out of memory for %lld touches",
                       (long long)r->ntouch);
    }
    memset(r->t_touch, 0, r->ntouch * sizeof(int64_t));
    memset(r->t_resume, 0, r->ntouch * sizeof(int64_t));
    memset(r->own, 0xff, r->ntouch * sizeof(int64_t)); /* all -1 */
    memset(r->placer, 0xff, r->npages * sizeof(int64_t));
    memset(r->msgs, 0, r->ntouch * sizeof(struct msgrec));
    return SPC_OK;
}

static void free_run(struct run *r)
{
    free(r->t_touch);
    free(r->t_resume);
    free(r->own);
    free(r->placer);
    free(r->msgs);
    free(r->tids);
    free(r->faulter_cpu);
    free(r->faulters);
}

/* One row per touch, with its own message (if read) and the message that placed its page. */
static int write_rows(struct run *r, struct spc_sample *out)
{
    const struct spc_config *c = r->cfg;
    int64_t k = 0;
    for (int64_t page = 0; page < r->npages; page++) {
        int64_t pl = r->placer[page];
        if (pl < 0)
            return set_err(r->err, r->errlen, SPC_E_SYSTEM, "page %lld was never placed",
                           (long long)page);
        const struct msgrec *placed = &r->msgs[pl];
        for (int64_t t = 0; t < c->threads; t++) {
            if (!c->shared_pages && page % c->threads != t)
                continue;
            int64_t slot = c->shared_pages ? t * r->npages + page : page;
            int64_t own = r->own[slot];
            struct spc_sample *s = &out[k++];
            s->thread = t;
            s->page = page;
            s->warmup = page < c->warmup;
            s->own_msg = own >= 0;
            s->eexist = own >= 0 && r->msgs[own].eexist;
            s->placed = own == pl;
            s->t_touch = r->t_touch[slot];
            s->t_resume = r->t_resume[slot];
            s->t_read = own >= 0 ? r->msgs[own].t_read : 0;
            s->t_req_start = placed->t_req_start;
            s->t_req_end = placed->t_req_end;
            s->t_net_end = placed->t_net_end;
            s->t_place_start = placed->t_place_start;
            s->t_place_end = placed->t_place_end;
        }
    }
    r->st->rows = k;
    return SPC_OK;
}

static int set_socket_timeouts(int fd, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        return -1;
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int spc_run(const struct spc_config *cfg, struct spc_sample *out, struct spc_stats *st,
            char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    err[0] = '\0';
    int code = check_config(cfg, err, errlen);
    if (code)
        return code;

    struct run r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.st = st;
    r.err = err;
    r.errlen = errlen;
    r.uffd = -1;
    r.npages = cfg->samples + cfg->warmup;
    r.ntouch = cfg->shared_pages ? r.npages * cfg->threads : r.npages;
    size_t region_len = (size_t)r.npages * cfg->page_bytes;
    int sig_held = 0, handler_started = 0, nfaulters = 0;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, &ca);
    pthread_cond_init(&r.bar_cv, &ca);
    pthread_condattr_destroy(&ca);

    if ((code = alloc_run(&r)) || (code = pick_cpus(&r)))
        goto out;
    r.src = map_prefaulted(cfg->page_bytes);
    if (!r.src) {
        st->sys_errno = errno;
        code = set_err(err, errlen, SPC_E_SYSTEM, "mmap of the source page: %s",
                       strerror(errno));
        goto out;
    }
    r.uffd = uffd_open(cfg->mode != 0, st, err, errlen);
    if (r.uffd < 0) {
        code = SPC_E_UFFD_OPEN;
        goto out;
    }
    if ((code = uffd_handshake(r.uffd, st, err, errlen)) ||
        (code = map_region(r.uffd, cfg->page_bytes, r.npages, &r.base, st, err, errlen)))
        goto out;
    if (cfg->zeropage && !(st->range_ioctls & (1ULL << _UFFDIO_ZEROPAGE))) {
        code = set_err(err, errlen, SPC_E_CONFIG, "UFFDIO_ZEROPAGE not offered on this region");
        goto out;
    }
    if (cfg->server_fd >= 0 && set_socket_timeouts(cfg->server_fd, cfg->timeout_ms) < 0) {
        st->sys_errno = errno;
        code = set_err(err, errlen, SPC_E_SERVER, "page server socket options: %s",
                       strerror(errno));
        goto out;
    }
    if (sig_acquire() < 0) {
        st->sys_errno = errno;
        code = set_err(err, errlen, SPC_E_SYSTEM, "sigaction(SIGUSR2): %s", strerror(errno));
        goto out;
    }
    sig_held = 1;

    /* New threads inherit a mask blocking every signal: a signal would make a faulting
     * thread retry its fault (a second message); only the handler takes SIGUSR2. */
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    code = start_thread(&r, &r.handler, r.handler_cpu, handler_main, &r);
    if (code == SPC_OK) {
        handler_started = 1;
        pthread_mutex_lock(&r.mu);
        while (!r.handler_ready)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
        for (; nfaulters < cfg->threads; nfaulters++) {
            struct faulter *f = &r.faulters[nfaulters];
            f->r = &r;
            f->index = nfaulters;
            code = start_thread(&r, &f->th, r.faulter_cpu[nfaulters], faulter_main, f);
            if (code)
                break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (code) {
        /* Faulting threads already started may wait at the barrier for the missing ones. */
        pthread_mutex_lock(&r.mu);
        __atomic_store_n(&r.code, code, __ATOMIC_RELAXED);
        __atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&r.bar_cv);
        pthread_mutex_unlock(&r.mu);
    } else {
        watch(&r);
    }

out:
    if (handler_started)
        stop_handler(&r);
    /* Closing the userfaultfd wakes any faulting thread still blocked: the kernel then
     * resolves its fault as if the region were not registered. */
    if (r.uffd >= 0)
        close(r.uffd);
    for (int i = 0; i < nfaulters; i++)
        pthread_join(r.faulters[i].th, NULL);
    if (sig_held)
        sig_release();
    if (code == SPC_OK)
        code = r.code;
    if (code == SPC_OK)
        code = write_rows(&r, out);
    if (r.base)
        munmap(r.base, region_len);
    if (r.src)
        munmap(r.src, cfg->page_bytes);
    free_run(&r);
    pthread_cond_destroy(&r.cv);
    pthread_cond_destroy(&r.bar_cv);
    pthread_mutex_destroy(&r.mu);
    return code;
}

int spc_probe(struct spc_stats *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    err[0] = '\0';
    int fd = uffd_open(1, st, err, errlen);
    if (fd < 0)
        return SPC_E_UFFD_OPEN;
    int code = uffd_handshake(fd, st, err, errlen);
    close(fd);
    return code;
}

/* --------------------------------------------------------------- placement series */

int spc_place_series(uint64_t page_bytes, const int64_t *batches, int64_t nbatches,
                     int64_t reps, int64_t *durations_ns, struct spc_stats *st, char *err,
                     size_t errlen)
{
    memset(st, 0, sizeof *st);
    err[0] = '\0';
    if (page_bytes != SMALL_PAGE && page_bytes != HUGE_PAGE)
        return set_err(err, errlen, SPC_E_CONFIG, "page_bytes %llu: use 4096 or 2097152",
                       (unsigned long long)page_bytes);
    if (nbatches < 1 || reps < 1)
        return set_err(err, errlen, SPC_E_CONFIG, "need at least one batch and one repetition");
    /* Every copy goes to pages never placed before, as in a migration: the region holds
     * them all, after `most` pages for one untimed copy that absorbs one-time costs. */
    int64_t most = 0, pages = 0;
    for (int64_t i = 0; i < nbatches; i++) {
        if (batches[i] < 1)
            return set_err(err, errlen, SPC_E_CONFIG, "batch sizes must be >= 1");
        if (batches[i] > most)
            most = batches[i];
        pages += batches[i] * reps;
    }
    pages += most;
    size_t src_len = (size_t)most * page_bytes, len = (size_t)pages * page_bytes;
    char *base = NULL;
    int code = SPC_OK;
    char *src = map_prefaulted(src_len);
    int fd = -1;
    if (!src) {
        st->sys_errno = errno;
        return set_err(err, errlen, SPC_E_SYSTEM, "mmap of the source: %s", strerror(errno));
    }
    fd = uffd_open(1, st, err, errlen);
    if (fd < 0) {
        code = SPC_E_UFFD_OPEN;
        goto out;
    }
    if ((code = uffd_handshake(fd, st, err, errlen)) ||
        (code = map_region(fd, page_bytes, pages, &base, st, err, errlen)))
        goto out;
    uint64_t dst = (uintptr_t)base;
    for (int64_t i = -1; i < nbatches; i++) {
        int64_t k = i < 0 ? most : batches[i];
        for (int64_t rep = 0; rep < (i < 0 ? 1 : reps); rep++) {
            uint64_t bytes = (uint64_t)k * page_bytes;
            int64_t t0 = now_ns();
            int e = place_range(fd, dst, (uintptr_t)src, bytes, 0, t0 + 10000000000LL);
            int64_t t1 = now_ns();
            if (e) {
                st->sys_errno = e;
                code = set_err(err, errlen, e == ENOMEM ? SPC_E_HUGEPAGES : SPC_E_SYSTEM,
                               "UFFDIO_COPY of %lld pages: %s", (long long)k, strerror(e));
                goto out;
            }
            if (i >= 0)
                durations_ns[i * reps + rep] = t1 - t0;
            dst += bytes;
        }
    }
out:
    if (fd >= 0)
        close(fd);
    if (base)
        munmap(base, len);
    munmap(src, src_len);
    return code;
}

/* ------------------------------------------------------------------ harness cost */

int spc_overhead(int64_t samples, int64_t *out_ns, char *err, size_t errlen)
{
    err[0] = '\0';
    if (samples < 1)
        return set_err(err, errlen, SPC_E_CONFIG, "samples must be >= 1");
    char *page = map_prefaulted(SMALL_PAGE);
    if (!page)
        return set_err(err, errlen, SPC_E_SYSTEM, "mmap: %s", strerror(errno));
    volatile char *p = page;
    for (int64_t i = 0; i < samples; i++) {
        int64_t t0 = now_ns();
        (void)*p;
        int64_t t1 = now_ns();
        out_ns[i] = t1 - t0;
    }
    munmap(page, SMALL_PAGE);
    return SPC_OK;
}

/* ------------------------------------------------------------------- page server */

struct client {
    int fd;
    size_t got; /* bytes of the current 8-byte request */
    unsigned char request[8];
};

/* Sends one page; gives up (returns -1) on error or once *stop is set. */
static int send_page(int fd, const char *buf, size_t len, volatile int *stop)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (*stop)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

int spc_serve(int listen_fd, uint64_t page_bytes, volatile int *stop, char *err,
              size_t errlen)
{
    err[0] = '\0';
    char *page = map_prefaulted(page_bytes);
    if (!page)
        return set_err(err, errlen, SPC_E_SYSTEM, "mmap of the page buffer: %s",
                       strerror(errno));
    struct client clients[MAX_CLIENTS];
    struct pollfd fds[MAX_CLIENTS + 1];
    int n = 0, code = SPC_OK;
    while (!*stop) {
        fds[0].fd = listen_fd;
        fds[0].events = POLLIN;
        for (int i = 0; i < n; i++) {
            fds[i + 1].fd = clients[i].fd;
            fds[i + 1].events = POLLIN;
        }
        int pr = poll(fds, (nfds_t)n + 1, SERVER_POLL_MS);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            code = set_err(err, errlen, SPC_E_SYSTEM, "poll: %s", strerror(errno));
            break;
        }
        /* Clients first: accepting below changes the array the revents refer to. */
        for (int i = n - 1; i >= 0; i--) {
            if (!fds[i + 1].revents)
                continue;
            struct client *c = &clients[i];
            ssize_t got = recv(c->fd, c->request + c->got, sizeof c->request - c->got, 0);
            int drop = got <= 0 && !(got < 0 && errno == EINTR);
            if (got > 0 && (c->got += (size_t)got) == sizeof c->request) {
                c->got = 0;
                memcpy(page, c->request, sizeof c->request); /* the page starts with its index */
                drop = send_page(c->fd, page, page_bytes, stop) < 0;
            }
            if (drop) {
                close(c->fd);
                clients[i] = clients[--n];
            }
        }
        if (fds[0].revents & POLLIN) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0 && n == MAX_CLIENTS) {
                close(fd);
            } else if (fd >= 0) {
                int one = 1;
                struct timeval tv = {.tv_sec = 0, .tv_usec = SERVER_SEND_TIMEOUT_MS * 1000};
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                clients[n].fd = fd;
                clients[n].got = 0;
                n++;
            }
        }
    }
    for (int i = 0; i < n; i++)
        close(clients[i].fd);
    munmap(page, page_bytes);
    return code;
}
