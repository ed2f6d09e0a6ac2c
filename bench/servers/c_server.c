// c_server: the uppercase service in C, the benchmark's near-physical limit.
//
//   c_server tcp [PORT]   one epoll loop; each connection: read, uppercase,
//                         write back, until the client half-closes; then close
//   c_server udp [PORT]   recvmmsg/sendmmsg: up to 64 datagrams per system call
//
// Binds 127.0.0.1 (port 0: any free port) and prints the same ready line as
// the Deno servers. Uppercases ASCII letters only: bytes >= 0x80 pass through
// unchanged, which is exact for the benchmark's ASCII lines (the Deno, Node
// and Python servers do full Unicode). Single-threaded, like the others.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "c_server: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void upper(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] >= 'a' && p[i] <= 'z') p[i] -= 32;
}

static int bind_socket(int type, int port) {
  int fd = socket(AF_INET, type, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  if ((type & 0xf) == SOCK_STREAM && listen(fd, 4096) < 0) die("listen");
  printf("The server is ready to receive on 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  return fd;
}

// Bytes a connection could not write yet; while there are any, it is not read
// (flow control, as in the Deno server).
typedef struct {
  unsigned char *data;
  size_t len, off;
} pending_t;

static pending_t **pending; // by file descriptor

static void close_conn(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  if (pending[fd]) {
    free(pending[fd]->data);
    free(pending[fd]);
    pending[fd] = NULL;
  }
  close(fd);
}

// Writes what it can; returns 0 when all is written, 1 when some is left.
static int flush_pending(int ep, int fd) {
  pending_t *p = pending[fd];
  while (p->off < p->len) {
    ssize_t n = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN) return 1;
      close_conn(ep, fd);
      return -1;
    }
    p->off += n;
  }
  free(p->data);
  free(p);
  pending[fd] = NULL;
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
  return 0;
}

static void serve_readable(int ep, int fd) {
  static unsigned char buf[65536];
  for (int rounds = 0; rounds < 16; rounds++) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) { // the client half-closed: it has sent everything
      close_conn(ep, fd);
      return;
    }
    if (n < 0) {
      if (errno != EAGAIN) close_conn(ep, fd);
      return;
    }
    upper(buf, n);
    ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
    if (w == n) {
      if ((size_t)n < sizeof buf) return; // read everything there was
      continue;
    }
    if (w < 0 && errno != EAGAIN) {
      close_conn(ep, fd);
      return;
    }
    if (w < 0) w = 0;
    pending_t *p = calloc(1, sizeof *p);
    p->data = malloc(n - w);
    memcpy(p->data, buf + w, n - w);
    p->len = n - w;
    pending[fd] = p;
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return;
  }
}

static void serve_tcp(int port) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  pending = calloc(rl.rlim_cur, sizeof *pending);
  int lfd = bind_socket(SOCK_STREAM | SOCK_NONBLOCK, port);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) break;
          if ((rlim_t)c >= rl.rlim_cur) {
            close(c);
            continue;
          }
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
      } else if (pending[fd]) {
        flush_pending(ep, fd);
      } else {
        serve_readable(ep, fd);
      }
    }
  }
}

static void serve_udp(int port) {
  int fd = bind_socket(SOCK_DGRAM, port);
  enum { BATCH = 64, SIZE = 65536 };
  static unsigned char bufs[BATCH][SIZE];
  static struct sockaddr_in6 addrs[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  for (;;) {
    for (int i = 0; i < BATCH; i++) {
      iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = SIZE};
      msgs[i].msg_hdr = (struct msghdr){
          .msg_name = &addrs[i], .msg_namelen = sizeof addrs[i], .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR || errno == ECONNREFUSED) continue;
      die("recvmmsg");
    }
    for (int i = 0; i < n; i++) {
      upper(bufs[i], msgs[i].msg_len);
      iov[i].iov_len = msgs[i].msg_len;
    }
    int sent = 0;
    while (sent < n) {
      int s = sendmmsg(fd, msgs + sent, n - sent, 0);
      if (s <= 0) break; // a full send buffer drops the rest, as UDP may
      sent += s;
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp"))) {
    fprintf(stderr, "usage: c_server tcp|udp [PORT]\n");
    return 2;
  }
  int port = argc > 2 ? atoi(argv[2]) : 0;
  if (!strcmp(argv[1], "tcp")) serve_tcp(port);
  else serve_udp(port);
  return 0;
}
