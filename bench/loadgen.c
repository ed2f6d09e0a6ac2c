// loadgen: the benchmark's load generator for the uppercase servers.
//
// One single-threaded epoll loop, so it needs one core and is never the
// bottleneck against anything slower than the C reference server (bench.ts
// shows that: the C server's replies/s is what this generator can drive).
// Every reply is checked byte for byte against the uppercased request.
//
//   loadgen --mode tcp  --port P --conns C --duration S [--warmup S]
//       C persistent connections, each a loop of: send a line, read the
//       whole uppercased line back.
//   loadgen --mode conn --port P --conns C --duration S
//       C clients, each a loop of the textbook exchange: connect, send a
//       line, half-close, read to end of stream, close.
//   loadgen --mode udp  --port P --conns C --duration S [--timeout-ms T]
//       C sockets, each a loop of: send a datagram, wait for the reply; no
//       reply within T ms counts as a loss and the socket sends the next.
//   loadgen --mode idle --port P --conns N --server-pid PID
//       open N connections and hold them until the server has accepted them
//       all; read the server's RSS; then send one line on every connection
//       and check every reply.
//
// Other options: --host A (IPv4, default 127.0.0.1), --size B (bytes per
// line, default 64), --server-pid PID (measure its CPU and memory over the
// measured window), --server-tree 1 (the server forks a process per
// connection: count the sockets and CPU of PID and all its descendants, and
// their memory as the sum of their PSS, so pages shared after fork() count
// once), --max-requests N (a bound on top of the duration).
//
// Prints one JSON object per line on stdout. Exit code 0 unless setup failed.
// Traffic only goes to the given IPv4 address, which bench.ts sets to the
// loopback address.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MODE_TCP, MODE_CONN, MODE_UDP, MODE_IDLE };
enum { ST_FREE, ST_CONNECTING, ST_WAITING, ST_RETRY, ST_DEAD, ST_HELD, ST_DONE };

#define MAX_LINE 4096
#define MAX_SAMPLES (64u * 1024u * 1024u)
#define NS 1000000000ull

typedef struct {
  int fd;
  int state;
  uint32_t id;
  uint32_t got;      // reply bytes received so far
  uint64_t seq;      // request number on this connection
  uint64_t sent_ns;  // when the current request (or connect) started
  uint64_t deadline; // UDP: when the current request counts as lost
  uint64_t last_progress;
  uint64_t max_gap;
  uint64_t replies;
  char reply[MAX_LINE + 1];
} conn_t;

static struct {
  int mode;
  struct sockaddr_in addr;
  int conns;
  double duration, warmup;
  int size;
  int timeout_ms;
  int server_pid;
  int server_tree;
  uint64_t max_requests;
} opt = {MODE_TCP, {0}, 16, 3.0, 0.5, 64, 100, 0, 0, 100000000ull};

typedef struct {
  int measuring;
  uint64_t replies, errors, verify_errors, losses, late, connect_errors, closed;
  uint32_t *samples;
  size_t nsamples, capsamples;
} stats_t;
static stats_t st;

static int ep;
static conn_t *conns;
static char first_error[256];
static char idle_extra[256];

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loadgen: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void note_error(const char *fmt, ...) {
  if (first_error[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(first_error, sizeof first_error, fmt, ap);
  va_end(ap);
  for (char *p = first_error; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = ' ';
}

// The request: a header that names the connection and request number, then
// lowercase letters, then a newline. All ASCII, so the reply has the same
// length; digits and spaces stay as they are, letters are uppercased.
static void make_request(char *buf, uint32_t id, uint64_t seq) {
  int n = snprintf(buf, MAX_LINE, "c%06u r%012" PRIu64 " ", id % 1000000u, (uint64_t)(seq % 1000000000000ull));
  static const char letters[] = "the quick brown fox jumps over the lazy dog ";
  for (int i = n; i < opt.size - 1; i++) buf[i] = letters[(i + seq) % (sizeof letters - 1)];
  buf[opt.size - 1] = '\n';
}

static void make_expected(char *buf, uint32_t id, uint64_t seq) {
  make_request(buf, id, seq);
  for (int i = 0; i < opt.size; i++)
    if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
}

static int verify(conn_t *c) {
  char expected[MAX_LINE];
  make_expected(expected, c->id, c->seq);
  if (c->got == (uint32_t)opt.size && memcmp(expected, c->reply, opt.size) == 0) return 1;
  st.verify_errors++;
  c->reply[c->got < MAX_LINE ? c->got : MAX_LINE] = 0;
  note_error("reply mismatch on connection %u request %" PRIu64 ": got %u bytes", c->id, c->seq,
             c->got);
  return 0;
}

static void record(conn_t *c, uint64_t t) {
  if (!st.measuring) return;
  uint64_t lat = t - c->sent_ns;
  if (lat > UINT32_MAX) lat = UINT32_MAX;
  if (st.nsamples == st.capsamples && st.capsamples < MAX_SAMPLES) {
    st.capsamples = st.capsamples ? st.capsamples * 2 : 1u << 16;
    st.samples = realloc(st.samples, st.capsamples * sizeof *st.samples);
    if (!st.samples) die("out of memory");
  }
  if (st.nsamples < st.capsamples) st.samples[st.nsamples++] = (uint32_t)lat;
  st.replies++;
  c->replies++;
  if (t - c->last_progress > c->max_gap) c->max_gap = t - c->last_progress;
  c->last_progress = t;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void watch(conn_t *c, int op, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void close_conn(conn_t *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}

// Sends the current request in one write; a 64-byte write to an empty socket
// buffer cannot be partial, and a reply cannot arrive before it is sent.
static int send_request(conn_t *c, uint64_t t) {
  char req[MAX_LINE];
  make_request(req, c->id, c->seq);
  c->got = 0;
  c->sent_ns = t;
  ssize_t n = send(c->fd, req, opt.size, MSG_NOSIGNAL);
  if (n == opt.size) return 1;
  if (n < 0 && errno == EAGAIN && opt.mode == MODE_UDP) return 1; // counts as lost
  st.errors++;
  note_error("send on connection %u: %s", c->id, n < 0 ? strerror(errno) : "partial write");
  return 0;
}

// ----- TCP, persistent connections -------------------------------------------

// A new non-blocking socket for a short-lived connection. Every one of these
// leaves a TIME_WAIT entry behind on our side; with one source address the
// kernel's search for a free port through tens of thousands of them became
// the generator's main cost (perf: __inet_hash_connect, tcp_twsk_unique). So
// connections come from 127.0.0.2 to 127.0.0.251 in turn (still loopback,
// like a lab of clients), each with its own range of ports.
// (Connections that send one line and half-close need no TCP_NODELAY.)
static int tcp_socket(void) {
  static uint32_t next_source;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  struct sockaddr_in src = {.sin_family = AF_INET};
  src.sin_addr.s_addr = htonl((127u << 24) | (2 + next_source++ % 250));
  if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind: %s", strerror(errno));
  return fd;
}

static int connect_blocking(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0)
    die("connect: %s", strerror(errno));
  set_nonblock(fd);
  return fd;
}

// Reads what is there of the reply. Returns 1 when the whole line is in,
// 0 when more is to come, -1 when the connection failed or closed early.
static int read_reply(conn_t *c) {
  for (;;) {
    ssize_t n = recv(c->fd, c->reply + c->got, MAX_LINE - c->got, 0);
    if (n > 0) {
      c->got += n;
      if (c->got >= (uint32_t)opt.size) return 1;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    st.errors++;
    note_error("connection %u %s after %u reply bytes", c->id,
               n == 0 ? "closed by the server" : strerror(errno), c->got);
    return -1;
  }
}

static void tcp_event(conn_t *c, uint32_t events, uint64_t t) {
  (void)events;
  if (c->state != ST_WAITING) return;
  int r = read_reply(c);
  if (r == 0) return;
  if (r < 0) {
    close_conn(c);
    c->state = ST_DEAD;
    return;
  }
  if (!verify(c)) {
    close_conn(c);
    c->state = ST_DEAD;
    return;
  }
  record(c, t);
  c->seq++;
  if (!send_request(c, t)) {
    close_conn(c);
    c->state = ST_DEAD;
  }
}

// ----- TCP, one connection per line (the textbook client) ---------------------

static void conn_start(conn_t *c, uint64_t t) {
  c->fd = tcp_socket();
  c->got = 0;
  c->sent_ns = t;
  if (connect(c->fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0 && errno != EINPROGRESS) {
    st.connect_errors++;
    note_error("connect: %s", strerror(errno));
    close_conn(c);
    c->state = ST_RETRY;
    c->deadline = t + 1000000; // try again in 1 ms
    return;
  }
  // Edge-triggered for both directions at once: no epoll_ctl per step.
  c->state = ST_CONNECTING;
  watch(c, EPOLL_CTL_ADD, EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET);
}

static void conn_fail(conn_t *c, uint64_t t) {
  close_conn(c);
  c->seq++;
  conn_start(c, t);
}

static void conn_event(conn_t *c, uint32_t events, uint64_t t) {
  if (c->state == ST_CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    // Connected (or failed: then the send says why).
    char req[MAX_LINE];
    make_request(req, c->id, c->seq);
    if (send(c->fd, req, opt.size, MSG_NOSIGNAL) != opt.size) {
      st.connect_errors++;
      note_error("connect or send: %s", strerror(errno));
      close_conn(c);
      c->state = ST_RETRY;
      c->deadline = t + 1000000; // try again in 1 ms
      return;
    }
    shutdown(c->fd, SHUT_WR); // half-close: "that is all I have to say"
    c->state = ST_WAITING;
    // The reply may already be there: read on, as edge-triggered requires.
  }
  if (c->state != ST_WAITING) return;
  for (;;) {
    ssize_t n = recv(c->fd, c->reply + c->got, MAX_LINE - c->got, 0);
    if (n > 0) {
      c->got += n;
      if (c->got >= MAX_LINE) break; // far too long: verify fails below
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) {
      st.errors++;
      note_error("connection-per-line read: %s after %u bytes", strerror(errno), c->got);
      return conn_fail(c, t);
    }
    break; // end of stream: the server has sent everything and closed
  }
  if (verify(c)) record(c, t);
  close_conn(c);
  c->seq++;
  conn_start(c, t);
}

// ----- UDP -------------------------------------------------------------------

static void udp_send_next(conn_t *c, uint64_t t) {
  c->seq++;
  send_request(c, t);
  c->deadline = t + (uint64_t)opt.timeout_ms * 1000000ull;
}

static void udp_event(conn_t *c, uint32_t events, uint64_t t) {
  (void)events;
  for (;;) {
    ssize_t n = recv(c->fd, c->reply, MAX_LINE, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      st.errors++;
      note_error("udp receive: %s", strerror(errno));
      return;
    }
    c->got = n;
    // The header carries the request number: a reply to an earlier request
    // (one already counted as lost) is late, not wrong.
    char expected[MAX_LINE];
    make_expected(expected, c->id, c->seq);
    if (n >= 22 && memcmp(expected, c->reply, 22) != 0 && c->reply[0] == 'C') {
      st.late++;
      continue;
    }
    if (verify(c)) record(c, t);
    udp_send_next(c, t);
  }
}

static void udp_check_timeouts(uint64_t t) {
  for (int i = 0; i < opt.conns; i++) {
    conn_t *c = &conns[i];
    if (t >= c->deadline) {
      if (st.measuring) st.losses++;
      udp_send_next(c, t);
    }
  }
}

// ----- measurement -----------------------------------------------------------

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (!st.nsamples) return 0;
  size_t i = (size_t)(p * st.nsamples);
  if (i >= st.nsamples) i = st.nsamples - 1;
  return st.samples[i] / 1000.0; // microseconds
}

static uint64_t proc_cpu_ticks(int pid) {
  if (!pid) return 0;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); // the command name may contain spaces
  if (!p) return 0;
  unsigned long utime = 0, stime = 0;
  // after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime);
  return utime + stime;
}

static long proc_status_kb(int pid, const char *field) {
  if (!pid) return 0;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  long kb = 0;
  size_t len = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, len) == 0 && line[len] == ':') kb = atol(line + len + 1);
  fclose(f);
  return kb;
}

// The server and, with --server-tree, all its descendants (each child's
// /proc/PID/task/PID/children: a forking server forks from its main thread).
// Returns how many PIDs it put in out (at most max).
static int server_pids(int *out, int max) {
  if (!opt.server_pid) return 0;
  int n = 0;
  out[n++] = opt.server_pid;
  for (int i = 0; opt.server_tree && i < n; i++) {
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", out[i], out[i]);
    FILE *f = fopen(path, "r");
    if (!f) continue; // it exited meanwhile
    int child;
    while (n < max && fscanf(f, "%d", &child) == 1) out[n++] = child;
    fclose(f);
  }
  return n;
}

enum { MAX_TREE = 1 << 17 };
static int tree[MAX_TREE];

// The server's CPU time in seconds. With --server-tree, the sum over the
// live tree of each process's time on a CPU in nanoseconds (schedstat):
// hundreds of processes each rounded to clock ticks would lose most of it.
static double server_cpu_s(void) {
  if (!opt.server_tree) return proc_cpu_ticks(opt.server_pid) / (double)sysconf(_SC_CLK_TCK);
  int n = server_pids(tree, MAX_TREE);
  double sum = 0;
  for (int i = 0; i < n; i++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/schedstat", tree[i]);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    unsigned long long ns = 0;
    if (fscanf(f, "%llu", &ns) == 1) sum += ns / 1e9;
    fclose(f);
  }
  return sum;
}

// The server's resident memory in KB: VmRSS, or with --server-tree the sum of
// the tree's PSS (a page shared by k processes counts 1/k in each).
static long server_mem_kb(void) {
  if (!opt.server_tree) return proc_status_kb(opt.server_pid, "VmRSS");
  int n = server_pids(tree, MAX_TREE);
  long sum = 0;
  for (int i = 0; i < n; i++) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", tree[i]);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    while (fgets(line, sizeof line, f))
      if (strncmp(line, "Pss:", 4) == 0) sum += atol(line + 4);
    fclose(f);
  }
  return sum;
}

// CPU time used by the whole machine (all cores), in clock ticks: what the
// server and the generator did not use of it is other load, i.e. noise.
static uint64_t machine_busy_ticks(void) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return 0;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle,
             &iowait, &irq, &softirq, &steal) != 8)
    user = nice = system = irq = softirq = steal = 0;
  fclose(f);
  return user + nice + system + irq + softirq + steal;
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static struct {
  uint64_t t0, machine_ticks0;
  double self0, server_cpu0;
} win;

static void start_window(uint64_t t) {
  memset(&st, 0, offsetof(stats_t, samples));
  st.nsamples = 0;
  st.measuring = 1;
  win.t0 = t;
  win.server_cpu0 = server_cpu_s();
  win.machine_ticks0 = machine_busy_ticks();
  win.self0 = self_cpu_s();
  for (int i = 0; i < opt.conns; i++) {
    conns[i].last_progress = t;
    conns[i].max_gap = 0;
    conns[i].replies = 0;
  }
}

static void report(uint64_t t) {
  double secs = (t - win.t0) / 1e9;
  double server_cpu =
      opt.server_pid ? (server_cpu_s() - win.server_cpu0) / secs * 100
                     : 0;
  double self_cpu = (self_cpu_s() - win.self0) / secs * 100;
  double machine_cpu =
      (machine_busy_ticks() - win.machine_ticks0) / (double)sysconf(_SC_CLK_TCK) / secs * 100;
  double other_cpu = machine_cpu - server_cpu - self_cpu;
  if (other_cpu < 0) other_cpu = 0;
  uint64_t stalled = 0, max_gap = 0, min_replies = UINT64_MAX, max_replies = 0;
  for (int i = 0; i < opt.conns; i++) {
    conn_t *c = &conns[i];
    uint64_t gap = c->max_gap;
    if (t - c->last_progress > gap) gap = t - c->last_progress;
    if (gap > NS) stalled++;
    if (gap > max_gap) max_gap = gap;
    if (c->replies < min_replies) min_replies = c->replies;
    if (c->replies > max_replies) max_replies = c->replies;
  }
  qsort(st.samples, st.nsamples, sizeof *st.samples, cmp_u32);
  static const char *names[] = {"tcp", "conn", "udp", "idle"};
  printf("{\"mode\":\"%s\",\"conns\":%d,\"seconds\":%.3f,\"replies\":%" PRIu64
         ",\"rps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f"
         ",\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64 ",\"connect_errors\":%" PRIu64
         ",\"losses\":%" PRIu64 ",\"late\":%" PRIu64 ",\"stalled\":%" PRIu64
         ",\"max_gap_ms\":%.1f,\"min_per_conn\":%" PRIu64 ",\"max_per_conn\":%" PRIu64
         ",\"server_cpu\":%.1f,\"gen_cpu\":%.1f,\"other_cpu\":%.1f,\"server_rss_kb\":%ld,\"server_hwm_kb\":%ld"
         "%s,\"first_error\":\"%s\"}\n",
         names[opt.mode], opt.conns, secs, st.replies, st.replies / secs, pct(0.5), pct(0.99),
         pct(0.999), st.nsamples ? st.samples[st.nsamples - 1] / 1000.0 : 0.0, st.errors,
         st.verify_errors, st.connect_errors, st.losses, st.late, stalled, max_gap / 1e6,
         min_replies == UINT64_MAX ? 0 : min_replies, max_replies, server_cpu, self_cpu, other_cpu,
         server_mem_kb(), proc_status_kb(opt.server_pid, "VmHWM"),
         idle_extra, first_error);
  fflush(stdout);
}

// ----- the loops ------------------------------------------------------------

static void run_load(void) {
  uint64_t t = now_ns();
  for (int i = 0; i < opt.conns; i++) {
    conn_t *c = &conns[i];
    c->id = i;
    c->fd = -1;
    c->last_progress = t;
    if (opt.mode == MODE_TCP) {
      c->fd = connect_blocking();
      c->state = ST_WAITING;
      watch(c, EPOLL_CTL_ADD, EPOLLIN);
    } else if (opt.mode == MODE_UDP) {
      c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
      if (c->fd < 0) die("socket: %s", strerror(errno));
      if (connect(c->fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0)
        die("connect: %s", strerror(errno));
      c->state = ST_WAITING;
      watch(c, EPOLL_CTL_ADD, EPOLLIN);
    }
  }
  t = now_ns();
  for (int i = 0; i < opt.conns; i++) {
    conn_t *c = &conns[i];
    if (opt.mode == MODE_TCP) {
      if (!send_request(c, t)) die("first send failed: %s", first_error);
    } else if (opt.mode == MODE_UDP) {
      c->seq = (uint64_t)-1;
      udp_send_next(c, t);
    } else {
      conn_start(c, t);
    }
  }

  uint64_t warm_end = t + (uint64_t)(opt.warmup * 1e9);
  uint64_t end = warm_end + (uint64_t)(opt.duration * 1e9);
  uint64_t next_scan = t;
  if (opt.warmup <= 0) start_window(t);
  struct epoll_event events[512];
  for (;;) {
    int timeout = opt.mode == MODE_UDP ? 2 : 20;
    int n = epoll_wait(ep, events, 512, timeout);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    t = now_ns();
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (opt.mode == MODE_TCP) tcp_event(c, events[i].events, t);
      else if (opt.mode == MODE_CONN) conn_event(c, events[i].events, t);
      else udp_event(c, events[i].events, t);
    }
    if (opt.mode == MODE_UDP && t >= next_scan) {
      udp_check_timeouts(t);
      next_scan = t + 1000000;
    }
    if (opt.mode == MODE_CONN) {
      for (int i = 0; i < opt.conns; i++)
        if (conns[i].state == ST_RETRY && t >= conns[i].deadline) conn_start(&conns[i], t);
    }
    if (!st.measuring && t >= warm_end) start_window(t);
    if (t >= end || st.replies >= opt.max_requests) break;
    if (st.errors + st.verify_errors > 1000) break; // something is badly wrong: stop early
  }
  report(t);
}

// The server's open sockets (other open files come and go while it starts).
static int count_sockets(int pid) {
  char path[64], link[320], target[64];
  snprintf(path, sizeof path, "/proc/%d/fd", pid);
  DIR *d = opendir(path);
  if (!d) return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    snprintf(link, sizeof link, "%s/%s", path, e->d_name);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len > 7 && memcmp(target, "socket:", 7) == 0) n++;
  }
  closedir(d);
  return n;
}

// The open sockets of the server (with --server-tree: of its whole tree).
static int server_sockets(void) {
  int n = server_pids(tree, MAX_TREE), sum = 0;
  for (int i = 0; i < n; i++) {
    int k = count_sockets(tree[i]);
    if (k > 0) sum += k;
  }
  return sum;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

// The idle mode measures the server's memory itself: before, while holding
// the connections (once the server has accepted them all: its count of open
// files says so), and after serving each once.
static void run_idle(void) {
  int base_fds = opt.server_pid ? server_sockets() : 0;
  long base_kb = server_mem_kb();
  uint64_t t0 = now_ns();
  int next = 0, pending = 0, held = 0;
  uint64_t deadline = t0 + 60 * NS;
  struct epoll_event events[512];
  // Connect with at most 256 handshakes in flight, so the server's accept
  // queue never overflows (an overflow costs a 1 s SYN retry, not a failure).
  while (held < opt.conns) {
    while (next < opt.conns && pending < 256) {
      conn_t *c = &conns[next];
      c->id = next++;
      c->fd = tcp_socket();
      if (connect(c->fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0 &&
          errno != EINPROGRESS)
        die("connect %d: %s", c->id, strerror(errno));
      c->state = ST_CONNECTING;
      watch(c, EPOLL_CTL_ADD, EPOLLOUT);
      pending++;
    }
    int n = epoll_wait(ep, events, 512, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (c->state != ST_CONNECTING) continue;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) die("connect %d: %s", c->id, strerror(err));
      c->state = ST_HELD;
      watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP); // any event now: the server closed it
      pending--;
      held++;
    }
    if (now_ns() > deadline) die("only %d of %d connections after 60 s", held, opt.conns);
  }
  double connect_s = (now_ns() - t0) / 1e9;

  // Hold: wait (at most 30 s) until the server has accepted every
  // connection, then 1 s more for it to settle, noting any connection that
  // the server closes meanwhile.
  int accepted = 0;
  uint64_t hold_end = now_ns() + 30 * NS, settle_end = 0;
  while (now_ns() < (settle_end ? settle_end : hold_end)) {
    if (!settle_end && opt.server_pid) {
      accepted = server_sockets() - base_fds;
      if (accepted >= opt.conns) settle_end = now_ns() + NS;
    } else if (!opt.server_pid && !settle_end) {
      settle_end = now_ns() + NS;
    }
    int n = epoll_wait(ep, events, 512, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (c->state == ST_HELD) {
        c->state = ST_DEAD;
        st.closed++;
      }
    }
  }
  long held_kb = server_mem_kb();

  // Serve each connection once: all requests go out at once.
  uint64_t closed_while_held = st.closed;
  uint64_t t = now_ns();
  start_window(t);
  int waiting = 0;
  for (int i = 0; i < opt.conns; i++) {
    conn_t *c = &conns[i];
    if (c->state != ST_HELD) continue;
    c->last_progress = t;
    if (send_request(c, now_ns())) {
      c->state = ST_WAITING;
      waiting++;
    }
  }
  deadline = now_ns() + 60 * NS;
  while (waiting > 0 && now_ns() < deadline) {
    int n = epoll_wait(ep, events, 512, 100);
    t = now_ns();
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (c->state != ST_WAITING) continue;
      int r = read_reply(c);
      if (r == 0) continue;
      if (r > 0 && verify(c)) record(c, t);
      c->state = ST_DONE;
      waiting--;
    }
  }
  if (waiting > 0) {
    st.errors += waiting;
    note_error("%d connections got no reply within 60 s", waiting);
  }
  st.closed = closed_while_held;
  t = now_ns();
  sleep_ms(200);
  snprintf(idle_extra, sizeof idle_extra,
           ",\"connect_s\":%.3f,\"accepted\":%d,\"closed_while_held\":%" PRIu64
           ",\"base_kb\":%ld,\"held_kb\":%ld,\"after_kb\":%ld",
           connect_s, accepted, st.closed, base_kb, held_kb, server_mem_kb());
  report(t);
  for (int i = 0; i < opt.conns; i++) close_conn(&conns[i]);
}

static double num_arg(const char *s, const char *name) {
  char *end;
  double v = strtod(s, &end);
  if (*end || end == s) die("%s needs a number, not \"%s\"", name, s);
  return v;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc) die("option %s needs a value", a);
    const char *v = argv[++i];
    if (!strcmp(a, "--mode")) {
      if (!strcmp(v, "tcp")) opt.mode = MODE_TCP;
      else if (!strcmp(v, "conn")) opt.mode = MODE_CONN;
      else if (!strcmp(v, "udp")) opt.mode = MODE_UDP;
      else if (!strcmp(v, "idle")) opt.mode = MODE_IDLE;
      else die("unknown mode %s", v);
    } else if (!strcmp(a, "--host")) host = v;
    else if (!strcmp(a, "--port")) port = (int)num_arg(v, a);
    else if (!strcmp(a, "--conns")) opt.conns = (int)num_arg(v, a);
    else if (!strcmp(a, "--duration")) opt.duration = num_arg(v, a);
    else if (!strcmp(a, "--warmup")) opt.warmup = num_arg(v, a);
    else if (!strcmp(a, "--size")) opt.size = (int)num_arg(v, a);
    else if (!strcmp(a, "--timeout-ms")) opt.timeout_ms = (int)num_arg(v, a);
    else if (!strcmp(a, "--server-pid")) opt.server_pid = (int)num_arg(v, a);
    else if (!strcmp(a, "--server-tree")) opt.server_tree = (int)num_arg(v, a);
    else if (!strcmp(a, "--max-requests")) opt.max_requests = (uint64_t)num_arg(v, a);
    else die("unknown option %s", a);
  }
  if (port <= 0 || port > 65535) die("--port is required");
  if (opt.conns < 1 || opt.conns > 100000) die("--conns must be 1..100000");
  if (opt.size < 32 || opt.size > MAX_LINE) die("--size must be 32..%d", MAX_LINE);
  if (opt.duration <= 0 || opt.duration > 600) die("--duration must be 0..600 s");
  if (opt.warmup < 0 || opt.warmup > 60) die("--warmup must be 0..60 s");
  opt.addr.sin_family = AF_INET;
  opt.addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host, &opt.addr.sin_addr) != 1) die("bad IPv4 address %s", host);
  if ((ntohl(opt.addr.sin_addr.s_addr) >> 24) != 127) die("only loopback targets (127.x)");

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  ep = epoll_create1(0);
  conns = calloc(opt.conns, sizeof *conns);
  if (!conns) die("out of memory");
  if (opt.mode == MODE_IDLE) run_idle();
  else run_load();
  return 0;
}
