/* The frame copy loop of the QEMU stand-in (hostvlan.testbed.vmtap), in C.
 *
 *     vmtap_relay <macvtap fd> <guest tap fd> <name>
 *
 * vmtap.py opens both devices, configures the guest NIC, prints its `ready` line and
 * then exec()s this program with the two fds inherited: the same process, without an
 * interpreter in the copy loop. Semantics are those of vmtap.Pump: every read(2) is one
 * Ethernet frame (no virtio-net header), copied to the other fd with one write(2); a
 * write that would block (EAGAIN) holds that direction until the fd is writable again
 * (backpressure, struct dir); a frame refused otherwise (EIO, ENOBUFS, ENETDOWN, EINVAL)
 * is dropped and counted; EOF, POLLERR/POLLHUP/POLLNVAL or any other error ends it with
 * exit 1, SIGTERM/SIGINT with exit 0; the counts are printed to stderr in the same words.
 *
 * Test scaffolding standing in for QEMU, never part of hostvlan's data path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BURST 64
#define MAX_FRAME 65536

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

/* One direction: frames read from `src` are written to `dst`. A frame whose write would
 * block (EAGAIN: the destination's socket buffer is full of frames not yet consumed
 * downstream) is kept, and `src` is not read again until `dst` is writable and the frame
 * went out: backpressure, as QEMU does (it stops taking frames from the guest's queue). */
struct dir {
    int src, dst;
    ssize_t pending; /* length of the kept frame in buf, 0 if none */
    unsigned long copied, dropped;
    unsigned char buf[MAX_FRAME];
};

static struct dir dirs[2]; /* [0]: macvtap -> guest, [1]: guest -> macvtap */

/* Write the frame in d->buf; 0 when done (sent or dropped), 1 when kept, -1 on failure. */
static int put(struct dir *d, ssize_t n, const char **why) {
    if (write(d->dst, d->buf, (size_t)n) == n) {
        d->copied++;
        d->pending = 0;
        return 0;
    }
    if (errno == EAGAIN) {
        d->pending = n;
        return 1;
    }
    d->pending = 0;
    if (errno == EIO || errno == ENOBUFS || errno == ENETDOWN || errno == EINVAL) {
        d->dropped++; /* a device down or a full queue downstream: the frame is lost on the wire */
        return 0;
    }
    *why = strerror(errno);
    return -1;
}

/* Copy up to BURST frames; 0 when src ran dry or a frame is kept, -1 on failure. */
static int move(struct dir *d, const char **why) {
    for (int i = 0; i < BURST; i++) {
        ssize_t n = read(d->src, d->buf, sizeof d->buf);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            *why = strerror(errno);
            return -1;
        }
        if (n == 0) {
            *why = "closed";
            return -1;
        }
        int r = put(d, n, why);
        if (r != 0)
            return r < 0 ? -1 : 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MACVTAP_FD GUEST_FD NAME\n", argv[0]);
        return 2;
    }
    int mvt = atoi(argv[1]), guest = atoi(argv[2]);
    const char *name = argv[3];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    dirs[0].src = dirs[1].dst = mvt;
    dirs[0].dst = dirs[1].src = guest;
    struct pollfd fds[2] = {{.fd = mvt}, {.fd = guest}}; /* fds[k] is dirs[k].src and dirs[1 - k].dst */
    int code = 0;
    const char *why = NULL;
    while (!stop && code == 0) {
        for (int k = 0; k < 2; k++)
            fds[k].events = (short)((dirs[k].pending ? 0 : POLLIN) | (dirs[1 - k].pending ? POLLOUT : 0));
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            why = strerror(errno);
            code = 1;
            break;
        }
        for (int k = 0; k < 2 && code == 0; k++) {
            short ev = fds[k].revents;
            struct dir *out = &dirs[1 - k];
            if ((ev & POLLOUT) && out->pending && put(out, out->pending, &why) < 0)
                code = 1;
            else if ((ev & POLLIN) && !dirs[k].pending && move(&dirs[k], &why) < 0)
                code = 1;
            else if (!(ev & (POLLIN | POLLOUT)) && (ev & (POLLERR | POLLHUP | POLLNVAL))) {
                why = "failed";
                code = 1;
            }
        }
    }
    if (why)
        fprintf(stderr, "vmtap %s: %s\n", name, why);
    fprintf(stderr, "vmtap %s: guest->macvtap %lu frames (%lu dropped), macvtap->guest %lu frames (%lu dropped)\n",
            name, dirs[1].copied, dirs[1].dropped, dirs[0].copied, dirs[0].dropped);
    close(guest);
    close(mvt);
    return code;
}
