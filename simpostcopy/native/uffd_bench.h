/*
 * userfaultfd microbenchmark: the local costs of a postcopy page fault.
 *
 * Everything between the cdef markers is also fed to cffi's cdef by _build.py,
 * so it must stay plain declarations (no #include, no #if).
 * All timestamps are int64 nanoseconds of CLOCK_MONOTONIC.
 */
#ifndef SPC_UFFD_BENCH_H
#define SPC_UFFD_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
/* Return codes: which kind of failure (err holds the message). */
#define SPC_OK 0
#define SPC_E_CONFIG 1    /* bad configuration */
#define SPC_E_UFFD_OPEN 2 /* no userfaultfd: see stats syscall_errno / dev_errno */
#define SPC_E_HUGEPAGES 3 /* not enough free 2 MiB pages: see stats hugepages_needed */
#define SPC_E_SERVER 4    /* page server unreachable, timed out or closed */
#define SPC_E_TIMEOUT 5   /* a wait exceeded timeout_ms */
#define SPC_E_SYSTEM 6    /* any other failing system call: see stats sys_errno */

/* How the userfaultfd was opened. */
#define SPC_OPEN_SYSCALL 1
#define SPC_OPEN_DEV 2

struct spc_config {
    uint64_t page_bytes;  /* 4096, or 2 MiB (MAP_HUGETLB) */
    int64_t samples;      /* measured pages */
    int64_t warmup;       /* pages faulted before the measured ones, reported as warm-up */
    int64_t capacity;     /* rows `out` holds: pages, or pages * threads with shared_pages */
    int32_t threads;      /* faulting threads */
    int32_t mode;         /* handler: 0 blocking read, 1 poll + read, 2 busy polling */
    int32_t affinity;     /* 0 scheduler, 1 all on one CPU, 2 handler and faulters apart */
    int32_t zeropage;     /* place with UFFDIO_ZEROPAGE instead of UFFDIO_COPY */
    int32_t shared_pages; /* every faulting thread touches every page */
    int32_t server_fd;    /* connected TCP socket to a page server, or -1 */
    int32_t timeout_ms;   /* bounds every wait; a stall with no progress ends within 2x */
    int32_t reserved;     /* keeps the struct free of padding; must be 0 */
};

/*
 * One row per (thread, page) touch. Private pages: one touch per page, so one row per
 * uffd message. `own_msg`: the handler read this touch's own fault message (with
 * shared pages the kernel drops a waiter's unread message when another message's
 * placement wakes it); `eexist`: that message's placement found the page already
 * there; `placed`: that message placed the page. t_read is the own message's (0 if
 * none); the request, network and placement stamps are those of the message that
 * placed the page.
 */
struct spc_sample {
    int64_t thread;
    int64_t page;
    int64_t warmup;
    int64_t own_msg;
    int64_t eexist;
    int64_t placed;
    int64_t t_touch;
    int64_t t_resume;
    int64_t t_read;
    int64_t t_req_start;
    int64_t t_req_end;
    int64_t t_net_end;
    int64_t t_place_start;
    int64_t t_place_end;
};

struct spc_stats {
    int64_t open_method;      /* SPC_OPEN_SYSCALL or SPC_OPEN_DEV, 0 if neither worked */
    int64_t syscall_errno;    /* errno of userfaultfd(2), 0 if it worked */
    int64_t dev_errno;        /* errno of /dev/userfaultfd, 0 if not needed or it worked */
    uint64_t features;        /* UFFDIO_API: features the kernel supports */
    uint64_t ioctls;          /* UFFDIO_API: ioctls the userfaultfd accepts */
    uint64_t range_ioctls;    /* UFFDIO_REGISTER: ioctls valid on the registered range */
    int64_t rows;             /* rows written to `out` */
    int64_t messages;         /* uffd messages handled */
    int64_t placed;           /* placements that filled a missing page */
    int64_t eexist;           /* placements that found the page already placed */
    int64_t pages_served;     /* pages received from the page server */
    int64_t t_start;          /* measured phase start: every warm-up touch resumed */
    int64_t t_end;            /* measured phase end: the last faulting thread finished */
    int64_t sys_errno;        /* errno of the call that failed, 0 if none */
    int64_t hugepages_needed; /* free 2 MiB pages the region needs */
};

/* One benchmark run (see the spec in the docs): returns SPC_OK or an SPC_E_* code. */
int spc_run(const struct spc_config *cfg, struct spc_sample *out, struct spc_stats *st,
            char *err, size_t errlen);

/* Opens a userfaultfd as spc_run does and records how, then closes it. */
int spc_probe(struct spc_stats *st, char *err, size_t errlen);

/*
 * Placement cost without faulting threads: for each batch size k, `reps` timed
 * UFFDIO_COPY calls of k pages, each into pages never placed before (the region holds
 * max(k) + sum(k) * reps pages); durations_ns[i * reps + r].
 */
int spc_place_series(uint64_t page_bytes, const int64_t *batches, int64_t nbatches,
                     int64_t reps, int64_t *durations_ns, struct spc_stats *st, char *err,
                     size_t errlen);

/* The harness's own cost: touch -> resume on a page already present, `samples` times. */
int spc_overhead(int64_t samples, int64_t *out_ns, char *err, size_t errlen);

/* Page server: answers each 8-byte request with page_bytes of data until *stop. */
int spc_serve(int listen_fd, uint64_t page_bytes, volatile int *stop, char *err,
              size_t errlen);
/* cdef-end */

#endif
