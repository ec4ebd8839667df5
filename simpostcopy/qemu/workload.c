/* The test guest's workload: touches memory and reports on the serial console.
 *
 *   workload idle
 *   workload seq  MIB        sequential sweep writing every 4 KiB page of MIB MiB
 *   workload rand MIB HOTMIB random 4 KiB writes over the first HOTMIB MiB of MIB MiB
 *
 * It first writes every page once (so all of it must be migrated), then loops, and every
 * 200 ms prints one line:
 *   wl t=<s> touches=<n> rate=<touches/s over the interval> max_stall_us=<longest gap
 *   between two consecutive touches so far> interval_stall_us=<longest in the interval>
 * A postcopy fault shows up as a stall: the guest blocks until the page arrives.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Where the buffer lies in guest-physical memory (root reads PFNs from pagemap): one
 * line "wl frames mib=<bin MiB> <pages in bin 0> <pages in bin 1> ..." over all of RAM,
 * then the maximal runs of consecutive frames in buffer order, 64 a line as
 * "wl frameruns <first frame>+<frames> ...", then "wl runs <n>" (how many runs). */
static void report_frames(unsigned char *buf, size_t pages) {
    FILE *f = fopen("/proc/self/pagemap", "rb");
    if (!f) { printf("wl frames unavailable\n"); return; }
    enum { BINS = 256 };
    static unsigned long bins[BINS];
    unsigned long long max_pfn = (unsigned long long)sysconf(_SC_PHYS_PAGES) * 5 / 4;
    unsigned long bin_pages = (unsigned long)((max_pfn + BINS - 1) / BINS);
    bin_pages = (bin_pages + 255) / 256 * 256; /* whole MiB */
    unsigned long long prev = 0, runs = 0, cap = 1024;
    unsigned long long (*run)[2] = malloc(cap * sizeof *run);
    for (size_t i = 0; i < pages; i++) {
        uint64_t e = 0;
        uintptr_t v = (uintptr_t)(buf + i * PAGE) / PAGE;
        if (fseeko(f, (off_t)(v * 8), SEEK_SET) || fread(&e, 8, 1, f) != 1) break;
        if (!(e >> 63)) continue;
        unsigned long long pfn = e & ((1ULL << 55) - 1);
        if (runs == 0 || pfn != prev + 1) {
            if (run && runs == cap) run = realloc(run, (cap *= 2) * sizeof *run);
            if (run) { run[runs][0] = pfn; run[runs][1] = 0; }
            runs++;
        }
        if (run) run[runs - 1][1]++;
        prev = pfn;
        if (pfn / bin_pages < BINS) bins[pfn / bin_pages]++;
    }
    fclose(f);
    printf("wl frames mib=%lu", bin_pages / 256);
    int last = BINS - 1;
    while (last > 0 && !bins[last]) last--;
    for (int b = 0; b <= last; b++) printf(" %lu", bins[b]);
    printf("\n");
    for (unsigned long long r = 0; run && r < runs; r++)
        printf("%s%llu+%llu%s", r % 64 ? " " : "wl frameruns ", run[r][0], run[r][1],
               r % 64 == 63 || r == runs - 1 ? "\n" : "");
    printf("wl runs %llu\n", runs);
    free(run);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "idle";
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    size_t hot = argc > 3 ? strtoul(argv[3], NULL, 10) : mib;
    if (hot > mib) hot = mib;
    size_t pages = mib * 1024 * 1024 / PAGE, hot_pages = hot * 1024 * 1024 / PAGE;
    unsigned char *buf = NULL;
    if (pages) {
        buf = malloc(pages * PAGE);
        if (!buf) { printf("wl error: cannot allocate %zu MiB\n", mib); fflush(stdout); return 1; }
        for (size_t i = 0; i < pages; i++) buf[i * PAGE] = (unsigned char)i;
    }
    if (pages) report_frames(buf, pages);
    printf("wl start mode=%s mib=%zu hot_mib=%zu\n", mode, mib, hot);
    fflush(stdout);
    uint64_t x = 88172645463325252ULL, touches = 0, last_touches = 0;
    double start = now(), last = start, report = start + 0.2, max_stall = 0, int_stall = 0;
    size_t i = 0;
    for (;;) {
        if (!strcmp(mode, "seq") && pages) {
            buf[i * PAGE] += 1;
            i = (i + 1) % pages;
        } else if (!strcmp(mode, "rand") && hot_pages) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            buf[(x % hot_pages) * PAGE] += 1;
        } else {
            usleep(1000);
        }
        touches++;
        double t = now(), gap = t - last;
        last = t;
        if (gap > max_stall) max_stall = gap;
        if (gap > int_stall) int_stall = gap;
        if (t >= report) {
            printf("wl t=%.3f touches=%llu rate=%.0f max_stall_us=%.0f interval_stall_us=%.0f\n",
                   t - start, (unsigned long long)touches,
                   (touches - last_touches) / (t - report + 0.2), max_stall * 1e6, int_stall * 1e6);
            fflush(stdout);
            last_touches = touches;
            int_stall = 0;
            report = t + 0.2;
            last = now(); /* printing is not a stall of the workload */
        }
    }
}
