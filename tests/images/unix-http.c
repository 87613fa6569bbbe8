/* unix-http: one HTTP/1.1 request over a unix socket, for test containers
 * (busybox's nc and wget speak TCP only).
 *
 *   unix-http SOCKET METHOD PATH [BODY]
 *
 * Sends the request with Connection: close (and the body as JSON, if
 * given), prints the whole response to stdout and exits 0; exits 2 if the
 * socket cannot be reached, 1 on usage or I/O errors. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: unix-http SOCKET METHOD PATH [BODY]\n");
        return 1;
    }
    const char *body = argc == 5 ? argv[4] : "";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "unix-http: socket path too long\n");
        return 1;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        fprintf(stderr, "unix-http: cannot connect to %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     argv[2], argv[3], strlen(body));
    if (n < 0 || (size_t)n >= sizeof head || write_all(fd, head, (size_t)n) != 0 ||
        write_all(fd, body, strlen(body)) != 0) {
        fprintf(stderr, "unix-http: cannot send the request: %s\n", strerror(errno));
        return 1;
    }
    char buf[4096];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "unix-http: cannot read the response: %s\n", strerror(errno));
            return 1;
        }
        if (r == 0)
            break;
        if (write_all(1, buf, (size_t)r) != 0)
            return 1;
    }
    printf("\n");
    return 0;
}
