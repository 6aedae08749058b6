/* A hostile tenant's toolbox, compiled static and run *as the tenant's payload* (a CGI of its httpd).
 *
 *   tenant_probe subvol DIR NAME           BTRFS_IOC_SUBVOL_CREATE: a subvolume nested in the tenant's own
 *   tenant_probe subvol-escape DIR NAME    BTRFS_IOC_SUBVOL_CREATE_V2 asking to inherit no qgroup at all
 *   tenant_probe snapshot SRC DIR NAME     BTRFS_IOC_SNAP_CREATE_V2 of a subvolume the tenant can read
 *   tenant_probe spoof SRC DST PORT        a raw IPv4/UDP packet with a forged source address
 *   tenant_probe udp DST PORT              a UDP datagram to DST:PORT, and its answer within a second
 *   tenant_probe icmp DST                  an ICMP echo request (a datagram socket, as an unprivileged ping
 *                                          sends it: busybox ping wants a raw socket as root), and its reply
 *   tenant_probe blockdev MAJOR MINOR      mknod a block device and open it for reading
 *   tenant_probe deep DIR LEVELS [SUBVOL]  a chain of LEVELS directories (200-byte names) under DIR, far past
 *                                          PATH_MAX, with a nested subvolume SUBVOL at its bottom
 *   tenant_probe chattr PATH               set the immutable flag (FS_IOC_SETFLAGS) on PATH
 *   tenant_probe setxattr PATH NAME VALUE  set an extended attribute (e.g. Fleet's trusted.* marker)
 *   tenant_probe pose TENANT               leave a process behind whose command line is exactly that of
 *                                          TENANT's systemd-nspawn (prints its pid inside), then exit
 *
 * Each prints one line "<verb> ok" or "<verb> failed: <strerror>" and exits 0 / 1. Test code only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <linux/fs.h>
#include <unistd.h>

#define BTRFS_IOCTL_MAGIC 0x94
#define BTRFS_SUBVOL_NAME_MAX 4039
#define BTRFS_PATH_NAME_MAX 4087
#define BTRFS_SUBVOL_QGROUP_INHERIT (1ULL << 2)

struct btrfs_ioctl_vol_args { int64_t fd; char name[BTRFS_PATH_NAME_MAX + 1]; };
struct btrfs_qgroup_limit { uint64_t flags, max_rfer, max_excl, rsv_rfer, rsv_excl; };
struct btrfs_qgroup_inherit {
    uint64_t flags, num_qgroups, num_ref_copies, num_excl_copies;
    struct btrfs_qgroup_limit lim;
    uint64_t qgroups[];
};
struct btrfs_ioctl_vol_args_v2 {
    int64_t fd;
    uint64_t transid;
    uint64_t flags;
    union { struct { uint64_t size; struct btrfs_qgroup_inherit *qgroup_inherit; }; uint64_t unused[4]; };
    union { char name[BTRFS_SUBVOL_NAME_MAX + 1]; uint64_t devid; uint64_t subvolid; };
};
#define BTRFS_IOC_SUBVOL_CREATE _IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)
#define BTRFS_IOC_SNAP_CREATE_V2 _IOW(BTRFS_IOCTL_MAGIC, 23, struct btrfs_ioctl_vol_args_v2)
#define BTRFS_IOC_SUBVOL_CREATE_V2 _IOW(BTRFS_IOCTL_MAGIC, 24, struct btrfs_ioctl_vol_args_v2)

static int report(const char *verb, int failed) {
    if (failed) printf("%s failed: %s\n", verb, strerror(errno));
    else printf("%s ok\n", verb);
    return failed ? 1 : 0;
}

static int subvol(const char *dir, const char *name, int escape) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return report(escape ? "subvol-escape" : "subvol", 1);
    if (!escape) {
        struct btrfs_ioctl_vol_args args;
        memset(&args, 0, sizeof args);
        strncpy(args.name, name, BTRFS_PATH_NAME_MAX);
        return report("subvol", ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, &args) != 0);
    }
    struct btrfs_qgroup_inherit inherit;  /* num_qgroups = 0: "belong to no group" */
    memset(&inherit, 0, sizeof inherit);
    struct btrfs_ioctl_vol_args_v2 args;
    memset(&args, 0, sizeof args);
    args.flags = BTRFS_SUBVOL_QGROUP_INHERIT;
    args.size = sizeof inherit;
    args.qgroup_inherit = &inherit;
    strncpy(args.name, name, BTRFS_SUBVOL_NAME_MAX);
    return report("subvol-escape", ioctl(fd, BTRFS_IOC_SUBVOL_CREATE_V2, &args) != 0);
}

static int snapshot(const char *source, const char *dir, const char *name) {
    int src = open(source, O_RDONLY | O_DIRECTORY), fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (src < 0 || fd < 0) return report("snapshot", 1);
    struct btrfs_ioctl_vol_args_v2 args;
    memset(&args, 0, sizeof args);
    args.fd = src;
    strncpy(args.name, name, BTRFS_SUBVOL_NAME_MAX);
    return report("snapshot", ioctl(fd, BTRFS_IOC_SNAP_CREATE_V2, &args) != 0);
}

static uint16_t checksum(const void *data, size_t length) {
    const uint16_t *words = data;
    uint32_t sum = 0;
    for (; length > 1; length -= 2) sum += *words++;
    if (length) sum += *(const uint8_t *)words;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static int spoof(const char *source, const char *destination, int port) {
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) return report("spoof", 1);
    char packet[sizeof(struct iphdr) + sizeof(struct udphdr) + 16];
    memset(packet, 0, sizeof packet);
    struct iphdr *ip = (struct iphdr *)packet;
    struct udphdr *udp = (struct udphdr *)(packet + sizeof *ip);
    memcpy(packet + sizeof *ip + sizeof *udp, "fleet-spoofed!!\n", 16);
    ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_UDP;
    ip->tot_len = htons(sizeof packet);
    ip->saddr = inet_addr(source); ip->daddr = inet_addr(destination);
    ip->check = checksum(ip, sizeof *ip);
    udp->source = htons(40000); udp->dest = htons(port); udp->len = htons(sizeof *udp + 16);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = ip->daddr};
    int failed = 0;
    for (int i = 0; i < 5 && !failed; i++)
        failed = sendto(fd, packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to) < 0;
    return report("spoof", failed);
}

static int udp(const char *destination, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
    struct timeval wait = { .tv_sec = 1 };
    char answer[256] = {0};
    if (fd < 0 || inet_pton(AF_INET, destination, &to.sin_addr) != 1) return report("udp", 1);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    if (sendto(fd, "ping", 4, 0, (struct sockaddr *)&to, sizeof to) != 4) return report("udp", 1);
    ssize_t got = recv(fd, answer, sizeof answer - 1, 0);
    if (got <= 0) return report("udp", 1);
    printf("udp ok %s\n", answer);
    return 0;
}

static int icmp(const char *destination) {
    int fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    struct sockaddr_in to = { .sin_family = AF_INET };
    struct timeval wait = { .tv_sec = 1 };
    unsigned char echo[16] = { 8, 0 }, answer[128];
    if (fd < 0 || inet_pton(AF_INET, destination, &to.sin_addr) != 1) return report("icmp", 1);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    if (sendto(fd, echo, sizeof echo, 0, (struct sockaddr *)&to, sizeof to) != sizeof echo) return report("icmp", 1);
    ssize_t got = recv(fd, answer, sizeof answer, 0);
    if (got <= 0 || answer[0] != 0) return report("icmp", 1);
    return report("icmp", 0);
}

static int blockdev(unsigned major_number, unsigned minor_number) {
    const char *path = "/tmp/fleet-probe-blk";
    unlink(path);
    if (mknod(path, S_IFBLK | 0600, makedev(major_number, minor_number)) != 0) return report("mknod", 1);
    int fd = open(path, O_RDONLY);
    unlink(path);
    return report("blockdev", fd < 0);
}

#define POSE_SENTINEL "fleet-probe-pose"

static int pose(const char *tenant) {
    static char machine[300], marker[300];
    snprintf(machine, sizeof machine, "--machine=%s", tenant);
    snprintf(marker, sizeof marker, "--setenv=FLEET_TENANT=%s", tenant);
    pid_t child = fork();
    if (child < 0) return report("pose", 1);
    if (child == 0) {
        setsid();
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0); dup2(null, 1); dup2(null, 2);
        char *argv[] = {"systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", "/", machine, marker,
                        "--as-pid2", POSE_SENTINEL, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    printf("pose ok %d\n", (int)child);
    return 0;
}

static int deep(const char *dir, int levels, const char *subvolume) {
    char name[201];
    memset(name, 'd', 200);
    name[200] = 0;
    if (chdir(dir)) return report("deep", 1);
    for (int i = 0; i < levels; i++) {
        if (mkdir(name, 0755) && errno != EEXIST) return report("deep", 1);
        if (chdir(name)) return report("deep", 1);
    }
    if (subvolume) {
        int fd = open(".", O_RDONLY | O_DIRECTORY);
        struct btrfs_ioctl_vol_args args = { .fd = 0 };
        strncpy(args.name, subvolume, BTRFS_PATH_NAME_MAX);
        if (fd < 0 || ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, &args)) return report("deep", 1);
        if (chdir(subvolume) || mkdir(name, 0755) || chdir(name)) return report("deep", 1);
        int nested = open(".", O_RDONLY | O_DIRECTORY);
        if (nested < 0 || ioctl(nested, BTRFS_IOC_SUBVOL_CREATE, &args)) return report("deep", 1);
    }
    return report("deep", 0);
}

static int immutable(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK), flags = 0;
    if (fd < 0 || ioctl(fd, FS_IOC_GETFLAGS, &flags)) return report("chattr", 1);
    flags |= FS_IMMUTABLE_FL;
    return report("chattr", ioctl(fd, FS_IOC_SETFLAGS, &flags) != 0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && !strcmp(argv[argc - 1], POSE_SENTINEL)) { for (;;) pause(); }
    if (argc == 3 && !strcmp(argv[1], "pose")) return pose(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "subvol")) return subvol(argv[2], argv[3], 0);
    if (argc == 4 && !strcmp(argv[1], "subvol-escape")) return subvol(argv[2], argv[3], 1);
    if (argc == 5 && !strcmp(argv[1], "snapshot")) return snapshot(argv[2], argv[3], argv[4]);
    if (argc == 5 && !strcmp(argv[1], "spoof")) return spoof(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "blockdev")) return blockdev(atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "udp")) return udp(argv[2], atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "icmp")) return icmp(argv[2]);
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "deep")) return deep(argv[2], atoi(argv[3]), argc == 5 ? argv[4] : NULL);
    if (argc == 3 && !strcmp(argv[1], "chattr")) return immutable(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "setxattr"))
        return report("setxattr", setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) != 0);
    fprintf(stderr, "usage: see the comment at the top of tenant_probe.c\n");
    return 2;
}
