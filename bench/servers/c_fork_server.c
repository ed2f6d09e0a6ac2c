// c_fork_server: the uppercase service with a process per connection, the
// slides' "fork" model (seed 004, "Multiplexing Network I/O").
//
//   c_fork_server [PORT]   TCP only; binds 127.0.0.1 (port 0: any free port)
//
// The parent only accepts; each connection gets a fork()ed child that runs
// the textbook's blocking loop (recv, uppercase, send everything) until the
// client half-closes, then exits. Simple to write with blocking calls; the
// cost is a process (page tables, a kernel stack, its own copy of every
// page it writes) per client. Uppercases ASCII letters only, like c_server.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "c_fork_server: %s: %s\n", what, strerror(errno));
  exit(1);
}

// The child: one client, blocking calls, exit at the end of its stream.
static void serve_client(int fd) {
  unsigned char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) break; // the client half-closed: it has sent everything
    if (n < 0) {
      if (errno == EINTR) continue;
      break; // reset: nothing more to do for this client
    }
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
    for (ssize_t off = 0; off < n;) { // send() may take only part of it
      ssize_t s = send(fd, buf + off, n - off, MSG_NOSIGNAL);
      if (s < 0 && errno == EINTR) continue;
      if (s < 0) _exit(0);
      off += s;
    }
  }
  close(fd);
  _exit(0);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  signal(SIGCHLD, SIG_IGN); // children that exit are reaped by the kernel: no zombies
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(lfd, 4096) < 0) die("listen");
  socklen_t len = sizeof a;
  getsockname(lfd, (struct sockaddr *)&a, &len);
  printf("The server is ready to receive on 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout); // before fork(), or every child would inherit (and print) the buffer
  for (;;) {
    int c = accept(lfd, NULL, NULL);
    if (c < 0) {
      if (errno != EINTR && errno != ECONNABORTED) usleep(10000); // EMFILE, ENOMEM: wait
      continue;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL); // the benchmark stops the parent: the children go too
      close(lfd); // the child serves its client only
      serve_client(c);
    }
    if (pid < 0) perror("c_fork_server: fork"); // out of processes: this client is refused
    close(c); // the parent's copy: the child holds the connection now
  }
}
