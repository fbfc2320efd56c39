/*
 * Counts the bytes a process moves with memcpy/memmove, by call site and
 * size: how the README's "bytes moved a request" was read (`moves.sh`
 * runs it). Loaded with LD_PRELOAD; counts only between SIGUSR1 (start)
 * and SIGUSR2 (stop, and write MOVES_OUT, default /tmp/moves.out: one
 * line per call site and size, "return-address size calls"). Rust moves
 * of more than a few dozen bytes are libc memcpy calls; smaller ones are
 * inlined and not seen. Single-threaded counting: serve on one thread.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 8192
static void *site[SLOTS];
static unsigned long long size[SLOTS], calls[SLOTS];
static volatile sig_atomic_t counting;
static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);

static void count(void *ra, size_t n) {
    if (!counting) return;
    unsigned long h = ((unsigned long)ra ^ ((unsigned long)n << 20)) % SLOTS;
    for (int i = 0; i < 64; i++) {
        unsigned long j = (h + i) % SLOTS;
        if (site[j] == ra && size[j] == n) { calls[j]++; return; }
        if (!site[j]) { site[j] = ra; size[j] = n; calls[j] = 1; return; }
    }
}

void *memcpy(void *d, const void *s, size_t n) {
    count(__builtin_return_address(0), n);
    return real_memcpy(d, s, n);
}

void *memmove(void *d, const void *s, size_t n) {
    count(__builtin_return_address(0), n);
    return real_memmove(d, s, n);
}

static void start(int sig) { (void)sig; counting = 1; }

static void stop(int sig) {
    (void)sig;
    counting = 0;
    const char *path = getenv("MOVES_OUT");
    FILE *f = fopen(path ? path : "/tmp/moves.out", "w");
    if (!f) return;
    for (int i = 0; i < SLOTS; i++)
        if (site[i]) fprintf(f, "%p %llu %llu\n", site[i], size[i], calls[i]);
    fclose(f);
}

__attribute__((constructor)) static void init(void) {
    real_memcpy = dlsym(RTLD_NEXT, "memcpy");
    real_memmove = dlsym(RTLD_NEXT, "memmove");
    signal(SIGUSR1, start);
    signal(SIGUSR2, stop);
}
