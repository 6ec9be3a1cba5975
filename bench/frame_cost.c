/* CPU time per frame through a switch, in the writer's own context (bench/frame_cost.py).
 *
 * usage: frame_cost TAP_IN TAP_OUT FRAMES LEN SRC_MAC DST_MAC [ip4]
 * Writes FRAMES frames of LEN bytes (EtherType 0x88b5, local experimental; with `ip4`: IPv4/UDP
 * 10.0.0.1 -> 10.0.0.2, what the address guard checks) into tap TAP_IN
 * and reads them from tap TAP_OUT, at most 256 in flight. A name starting with '/' is a macvtap's
 * character device (what QEMU opens), one starting with '@' a packet socket on that device (the
 * far end of a veth "wire"; bench/frame_cost_macvtap.py), else a tap device's name. A tap write runs the bridge's whole
 * receive/forward/transmit path in this process (softirq on the same CPU), so
 * getrusage(user+sys) / frames is the CPU the path costs per frame, steady however busy the
 * other CPU is. Prints: cpu_ns_per_frame wall_ns_per_frame frames_received write_retries
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/socket.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
static int op(const char *name) {
    if (name[0] == '@') {
        int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL)), one = 1;
        struct sockaddr_ll a; memset(&a, 0, sizeof a);
        a.sll_family = AF_PACKET; a.sll_protocol = htons(ETH_P_ALL); a.sll_ifindex = if_nametoindex(name + 1);
        if (fd < 0 || !a.sll_ifindex || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror(name); exit(1); }
        if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) { perror("PACKET_IGNORE_OUTGOING"); exit(1); }
        return fd;
    }
    const char *p = name[0] == '/' ? name : "/dev/net/tun";
    int fd = open(p, O_RDWR | O_NONBLOCK);
    if (fd < 0) { perror(p); exit(1); }
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr); ifr.ifr_flags = IFF_TAP | IFF_NO_PI;  /* macvtap: no vnet header */
    if (name[0] != '/') strncpy(ifr.ifr_name, name, IFNAMSIZ-1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); exit(1); }
    return fd;
}
static void mac(const char *s, unsigned char *o) { sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", o, o+1, o+2, o+3, o+4, o+5); }
static double cpu(void) { struct rusage r; getrusage(RUSAGE_SELF, &r); return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6; }
int main(int argc, char **argv) {
    int tx = op(argv[1]), rx = op(argv[2]); long n = atol(argv[3]); int len = atoi(argv[4]);
    unsigned char f[2048] = {0}, buf[65536]; mac(argv[6], f); mac(argv[5], f + 6); f[12] = 0x88; f[13] = 0xb5;
    if (argc > 7 && !strcmp(argv[7], "ip4")) {
        static const unsigned char ip[28] = {0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
                                             0x13, 0x88, 0x13, 0x89, 0, 30, 0, 0};
        f[12] = 0x08; f[13] = 0x00; memcpy(f + 14, ip, sizeof ip);
        f[16] = (len - 14) >> 8; f[17] = (len - 14) & 255; f[38] = (len - 34) >> 8; f[39] = (len - 34) & 255;
        unsigned sum = 0;  /* a valid header checksum: br_netfilter, where loaded, drops a bad one */
        for (int i = 14; i < 34; i += 2) sum += (f[i] << 8) | f[i + 1];
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        f[24] = ~sum >> 8; f[25] = ~sum & 255;
    }
    while (read(rx, buf, sizeof buf) > 0) {}
    long sent = 0, got = 0, eagain = 0;
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0); double c0 = cpu();
    while (got < n) {
        for (int i = 0; i < 32 && sent < n && sent - got < 256; i++) {
            if (write(tx, f, len) == len) sent++; else { eagain++; break; }
        }
        ssize_t r;
        while ((r = read(rx, buf, sizeof buf)) > 0) got++;
        if (sent == got + 0 && sent >= n) break;
        if (sent >= n || sent - got >= 256) {
            struct pollfd p = {.fd = rx, .events = POLLIN};
            if (poll(&p, 1, 200) == 0) { fprintf(stderr, "stall: sent %ld got %ld\n", sent, got); sent = got; if (sent >= n) break; }
        }
    }
    double c1 = cpu(); clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.0f %.0f %ld %ld\n", (c1 - c0) / got * 1e9, wall / got * 1e9, got, eagain);
    return 0;
}
