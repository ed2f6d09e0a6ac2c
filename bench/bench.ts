/**
 * The benchmark: our TCP and UDP uppercase servers against Node, Python and C.
 *
 * ```sh
 * deno task bench            # full run: 3 runs, median, about 12 minutes
 * deno task bench --quick    # one short run, under a minute
 * deno task bench --help     # every option (modes, connection counts, candidates)
 * ```
 *
 * Every server is started on a free port of 127.0.0.1 and pinned to core 0;
 * the load generator (bench/loadgen.c, compiled here with gcc into
 * bench/.build/) is pinned to core 1. The generator checks every reply byte
 * for byte and reports replies/s, latency percentiles, connections that made
 * no progress for over a second, and the server's CPU time over the measured
 * window (from /proc/PID/stat). For the idle mode this driver reads the
 * server's memory (VmRSS from /proc/PID/status) before and while it holds
 * 10,000 idle connections. The result is a Markdown table on stdout, with
 * ratios to Node and to C computed within each run, then the median of runs.
 *
 * @module
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const BUILD = `${ROOT}/bench/.build`;

/** The load generator's modes, in the order they are run and reported. */
const MODES = ["tcp", "conn", "udp", "idle"] as const;
type Mode = typeof MODES[number];

const MODE_TITLES: Record<Mode, string> = {
  tcp: "TCP persistent (request/response, 64-byte line)",
  conn: "TCP connection per line (connect, send, half-close, read to end, close)",
  udp: "UDP request/response (per-request timeout, losses counted)",
  idle: "Idle TCP connections held, then each served once",
};

/** How to start one server for one transport. */
interface ServerSpec {
  /** Short name used in the table and on the command line. */
  name: string;
  /** What it is, for the legend. */
  about: string;
  /** Command line for TCP, or undefined if it has no TCP server. */
  tcp?: string[];
  /** Command line for UDP, or undefined if it has no UDP server. */
  udp?: string[];
  /** True for our programs and candidate copies of them. */
  ours: boolean;
  /**
   * True for a server that forks a process per connection: its sockets, CPU
   * and memory (the sum of PSS) are counted over its whole process tree.
   */
  tree?: boolean;
  /** True for a server measured only when named in --servers. */
  optIn?: boolean;
}

/** What loadgen prints for one measured window. */
interface GenResult {
  mode: string;
  conns: number;
  seconds: number;
  replies: number;
  rps: number;
  p50_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  errors: number;
  verify_errors: number;
  connect_errors: number;
  losses: number;
  late: number;
  stalled: number;
  max_gap_ms: number;
  min_per_conn: number;
  max_per_conn: number;
  server_cpu: number;
  gen_cpu: number;
  /** CPU used by other processes during the window (% of one core): noise. */
  other_cpu: number;
  server_rss_kb: number;
  server_hwm_kb: number;
  first_error: string;
  /** Idle mode only: seconds to open every connection. */
  connect_s?: number;
  /** Idle mode only: connections the server had accepted (its new open files). */
  accepted?: number;
  /** Idle mode only: the server's VmRSS before, while holding, after serving. */
  base_kb?: number;
  held_kb?: number;
  after_kb?: number;
}

/** The idle mode's memory readings around one generator run. */
interface IdleResult {
  held: number;
  connectSeconds: number;
  baseKb: number;
  heldKb: number;
  afterKb: number;
  hwmKb: number;
  /** (RSS holding N idle connections - RSS before) / N. */
  kbPerConn: number;
  /** Same, after every connection was served once. */
  kbPerConnAfter: number;
  serve: GenResult;
}

/** One measurement: a mode, a connection count, a server, a run. */
interface Sample {
  run: number;
  mode: Mode;
  conns: number;
  server: string;
  gen?: GenResult;
  idle?: IdleResult;
  failure?: string;
}

interface Options {
  quick: boolean;
  runs: number;
  duration: number;
  warmup: number;
  modes: Mode[];
  conns: number[];
  idleConns: number;
  servers: string[] | undefined;
  tcpServer: string;
  udpServer: string;
  candidates: { name: string; transport: "tcp" | "udp"; path: string }[];
  pin: boolean;
  maxNoise: number;
  retries: number;
  json: string | undefined;
  verbose: boolean;
}

const USAGE = `Usage: deno task bench [options]

Measures our tcp_server.ts and udp_server.ts against Node, Python and C
servers doing the same uppercase service, and prints a Markdown table.

Options:
  --quick                one short run (under a minute) instead of 3 full runs
  --runs N               runs to take the median of (default 3; --quick: 1)
  --duration S           measured seconds per point (default 2.5; --quick: 0.4)
  --warmup S             unmeasured seconds before each point (default 0.5; --quick: 0.15)
  --modes LIST           any of tcp,conn,udp,idle (default: all)
  --conns LIST           concurrent connections or sockets (default 1,16,256)
  --idle-conns N         connections held in the idle mode (default 10000)
  --servers LIST         only these servers (names as in the table); c-fork, the
                         C server with a process per connection, runs only if named
  --tcp-server PATH      measure this script as "deno" instead of tcp_server.ts
  --udp-server PATH      measure this script as "deno" instead of udp_server.ts
  --candidate NAME=tcp:PATH, --candidate NAME=udp:PATH
                         also measure a modified copy of a server (repeatable);
                         it must take the same flags and print the same ready line
  --no-pin               do not pin servers and generator to separate cores
  --max-noise PCT        re-measure a point if other processes used more than PCT%
                         of a core meanwhile (default 20)
  --retries N            re-measurements per noisy point (default 2; --quick: 0)
  --json PATH            also write every raw measurement to PATH
  --verbose              print each measurement as it is taken (to stderr)
  --help                 show this help`;

function parseOptions(args: string[]): Options | undefined {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      modes: { type: "string", default: MODES.join(",") },
      conns: { type: "string", default: "1,16,256" },
      "idle-conns": { type: "string", default: "10000" },
      servers: { type: "string" },
      "tcp-server": { type: "string", default: "tcp_server.ts" },
      "udp-server": { type: "string", default: "udp_server.ts" },
      candidate: { type: "string", multiple: true, default: [] },
      "no-pin": { type: "boolean", default: false },
      "max-noise": { type: "string", default: "20" },
      retries: { type: "string" },
      json: { type: "string" },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  const quick = values.quick;
  const modes = values.modes.split(",").map((m) => m.trim()) as Mode[];
  for (const mode of modes) {
    if (!MODES.includes(mode)) throw new Error(`Unknown mode "${mode}" (use ${MODES.join(",")})`);
  }
  const candidates = values.candidate.map((text) => {
    const match = /^([\w.-]+)=(tcp|udp):(.+)$/.exec(text);
    if (!match) throw new Error(`--candidate must look like NAME=tcp:PATH, not "${text}"`);
    return { name: match[1], transport: match[2] as "tcp" | "udp", path: match[3] };
  });
  return {
    quick,
    runs: positive(values.runs ?? (quick ? "1" : "3"), "--runs", 20),
    duration: positive(values.duration ?? (quick ? "0.4" : "2.5"), "--duration", 60),
    warmup: positive(values.warmup ?? (quick ? "0.15" : "0.5"), "--warmup", 10),
    modes: MODES.filter((m) => modes.includes(m)),
    conns: values.conns.split(",").map((c) => positive(c, "--conns", 5000)),
    idleConns: positive(values["idle-conns"], "--idle-conns", 15000),
    servers: values.servers?.split(",").map((s) => s.trim()),
    tcpServer: values["tcp-server"],
    udpServer: values["udp-server"],
    candidates,
    pin: !values["no-pin"],
    maxNoise: positive(values["max-noise"], "--max-noise", 200),
    retries: Number(values.retries ?? (quick ? "0" : "2")),
    json: values.json,
    verbose: values.verbose,
  };
}

function positive(text: string, flag: string, max: number): number {
  const value = Number(text);
  if (!(value > 0 && value <= max)) throw new Error(`${flag} must be a number in (0, ${max}]`);
  return value;
}

// ---------------------------------------------------------------------------
// Tools: compile the C programs, find Python, check pinning
// ---------------------------------------------------------------------------

async function run(cmd: string[], options: Deno.CommandOptions = {}): Promise<Deno.CommandOutput> {
  return await new Deno.Command(cmd[0], { args: cmd.slice(1), ...options }).output();
}

async function available(cmd: string[]): Promise<boolean> {
  try {
    return (await run(cmd, { stdout: "null", stderr: "null" })).success;
  } catch {
    return false;
  }
}

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

/** Compiles a C source into bench/.build/ unless the binary is newer. */
async function compile(source: string, name: string): Promise<string> {
  const binary = `${BUILD}/${name}`;
  const sourcePath = `${ROOT}/bench/${source}`;
  if (mtime(binary) > mtime(sourcePath)) return binary;
  Deno.mkdirSync(BUILD, { recursive: true });
  const out = await run(["gcc", "-O2", "-Wall", "-o", binary, sourcePath], { stderr: "piped" });
  if (!out.success) {
    throw new Error(`gcc failed on ${source}:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return binary;
}

async function pythonPath(): Promise<string | undefined> {
  try {
    const out = await run(["python3", "-c", "import sys; print(sys.executable)"], {
      stdout: "piped",
      stderr: "null",
    });
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

async function versionOf(cmd: string[]): Promise<string> {
  try {
    const out = await run(cmd, { stdout: "piped", stderr: "piped" });
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    return text.split("\n")[0].trim();
  } catch {
    return "missing";
  }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/** Lines of a child's output, one at a time, with a deadline per line. */
class Lines {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #queue: string[] = [];
  #pending: Promise<ReadableStreamReadResult<string>> | undefined;
  done = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** The next line, or undefined at the end of the stream or after `ms`. */
  async next(ms: number): Promise<string | undefined> {
    const deadline = Date.now() + ms;
    while (this.#queue.length === 0 && !this.done) {
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), left);
      });
      // A read that loses the race stays pending and is picked up next time.
      this.#pending ??= this.#reader.read();
      const result = await Promise.race([this.#pending, timeout]);
      clearTimeout(timer);
      if (result === "timeout") return undefined;
      this.#pending = undefined;
      if (result.done) {
        this.done = true;
        if (this.#buffer) this.#queue.push(this.#buffer);
        break;
      }
      this.#buffer += result.value;
      const parts = this.#buffer.split("\n");
      this.#buffer = parts.pop() ?? "";
      this.#queue.push(...parts);
    }
    return this.#queue.shift();
  }

  /** Reads and drops everything until the end, so the child never blocks on a full pipe. */
  async drain(keep: (line: string) => void = () => {}) {
    for (;;) {
      const line = await this.next(3_600_000);
      if (line === undefined) return;
      keep(line);
    }
  }

  async cancel() {
    try {
      await this.#reader.cancel();
    } catch {
      // already closed
    }
  }
}

/** A server under test: its process, PID and port. */
interface RunningServer {
  child: Deno.ChildProcess;
  pid: number;
  /** Measure the PID's whole process tree (see ServerSpec.tree). */
  tree?: boolean;
  port: number;
  stderr: string[];
  stop(): Promise<void>;
}

async function startServer(cmd: string[], pin: boolean): Promise<RunningServer> {
  const full = pin ? ["taskset", "-c", "0", ...cmd] : cmd;
  const child = new Deno.Command(full[0], {
    args: full.slice(1),
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0" },
  }).spawn();
  const stdout = new Lines(child.stdout);
  const stderrLines = new Lines(child.stderr);
  const stderr: string[] = [];
  const stderrDone = stderrLines.drain((line) => {
    if (stderr.length < 20) stderr.push(line);
  });
  const stop = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await stdout.cancel();
    await stderrLines.cancel();
    await stderrDone;
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    const line = await stdout.next(Math.max(1, deadline - Date.now()));
    if (line === undefined) {
      await stop();
      throw new Error(`${cmd.join(" ")} did not get ready: ${stderr.join(" | ") || "no output"}`);
    }
    const match = /ready to receive on 127\.0\.0\.1:(\d+)/.exec(line);
    if (match) {
      stdout.drain(); // --quiet servers say little, but never let the pipe fill
      return { child, pid: child.pid, port: Number(match[1]), stderr, stop };
    }
  }
}

function genCommand(loadgen: string, pin: boolean, args: (string | number)[]): string[] {
  const cmd = [loadgen, ...args.map(String)];
  return pin ? ["taskset", "-c", "1", ...cmd] : cmd;
}

/**
 * Runs the generator for one measured point. Another engineer's test suite
 * may be running on the same two cores: if other processes used more than
 * --max-noise % of a core during the window, wait and measure again (at most
 * --retries times), keeping the quietest attempt.
 */
async function measure(
  loadgen: string,
  server: RunningServer,
  mode: Mode,
  conns: number,
  opts: Options,
): Promise<GenResult> {
  let best: GenResult | undefined;
  for (let attempt = 0; attempt <= opts.retries; attempt++) {
    if (attempt > 0) await sleep(2000);
    const result = await measureOnce(loadgen, server, mode, conns, opts);
    if (!best || result.other_cpu < best.other_cpu) best = result;
    if (result.other_cpu <= opts.maxNoise) break;
    if (opts.verbose) log(`  noisy (${result.other_cpu}% other CPU): measuring again`);
  }
  return best!;
}

/** Runs the generator once and returns its JSON result. */
async function measureOnce(
  loadgen: string,
  server: RunningServer,
  mode: Mode,
  conns: number,
  opts: Options,
): Promise<GenResult> {
  const cmd = genCommand(loadgen, opts.pin, [
    "--mode",
    mode,
    "--port",
    server.port,
    "--conns",
    conns,
    "--duration",
    opts.duration,
    "--warmup",
    opts.warmup,
    "--server-pid",
    server.pid,
    ...(server.tree ? ["--server-tree", 1] : []),
  ]);
  const timeoutMs = mode === "idle" ? 180_000 : (opts.duration + opts.warmup) * 1000 + 30_000;
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  if (!out.success || !text.startsWith("{")) {
    throw new Error(`loadgen failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return JSON.parse(text) as GenResult;
}

/**
 * The idle mode: the generator opens N connections, holds them until the
 * server has accepted them all and settled, reads the server's RSS, then
 * serves each connection once.
 */
async function measureIdle(
  loadgen: string,
  server: RunningServer,
  opts: Options,
): Promise<IdleResult> {
  await sleep(500); // let the server finish starting up before the baseline
  // Measured once, never again when noisy: a second try on the same server
  // would start from the memory the first one's connections left it.
  const serve = await measureOnce(loadgen, server, "idle", opts.idleConns, opts);
  const n = opts.idleConns;
  const { base_kb = 0, held_kb = 0, after_kb = 0, accepted = 0 } = serve;
  if (accepted < n) throw new Error(`the server accepted only ${accepted} of ${n} connections`);
  return {
    held: accepted,
    connectSeconds: serve.connect_s ?? 0,
    baseKb: base_kb,
    heldKb: held_kb,
    afterKb: after_kb,
    hwmKb: serve.server_hwm_kb,
    kbPerConn: (held_kb - base_kb) / n,
    kbPerConnAfter: (after_kb - base_kb) / n,
    serve,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

function serverSpecs(
  opts: Options,
  python: string | undefined,
  cServers: { epoll: string; fork: string },
): ServerSpec[] {
  const deno = Deno.execPath();
  const ourTcp = ["--port", "0", "--quiet", "--max-connections", "20000"];
  const ourUdp = ["--port", "0", "--quiet"];
  const specs: ServerSpec[] = [
    {
      name: "deno",
      about: `ours: ${opts.tcpServer}, ${opts.udpServer}`,
      tcp: [deno, "run", "--allow-net", opts.tcpServer, ...ourTcp],
      udp: [deno, "run", "--allow-net", opts.udpServer, ...ourUdp],
      ours: true,
    },
  ];
  for (const c of opts.candidates) {
    let spec = specs.find((s) => s.name === c.name);
    if (!spec) {
      spec = { name: c.name, about: "candidate:", ours: true };
      specs.push(spec);
    }
    // A copy outside the project has no deno.json: enable UDP explicitly.
    const cmd = [deno, "run", "--allow-net", "--unstable-net", c.path];
    spec[c.transport] = [...cmd, ...(c.transport === "tcp" ? ourTcp : ourUdp)];
    spec.about += ` ${c.path}`;
  }
  specs.push({
    name: "node",
    about: "Node net/dgram (bench/servers/node_server.mjs)",
    tcp: ["node", "bench/servers/node_server.mjs", "tcp"],
    udp: ["node", "bench/servers/node_server.mjs", "udp"],
    ours: false,
  });
  if (python) {
    specs.push({
      name: "py-asyncio",
      about: "Python asyncio Protocol (bench/servers/py_asyncio_server.py)",
      tcp: [python, "bench/servers/py_asyncio_server.py", "tcp"],
      udp: [python, "bench/servers/py_asyncio_server.py", "udp"],
      ours: false,
    }, {
      name: "py-textbook",
      about: "textbook Python: blocking sockets, TCP with a thread per connection " +
        "(bench/servers/py_textbook_tcp.py, py_textbook_udp.py)",
      tcp: [python, "bench/servers/py_textbook_tcp.py"],
      udp: [python, "bench/servers/py_textbook_udp.py"],
      ours: false,
    });
  }
  specs.push({
    name: "c",
    about: "C epoll/recvmmsg, ASCII uppercase (bench/servers/c_server.c)",
    tcp: [cServers.epoll, "tcp"],
    udp: [cServers.epoll, "udp"],
    ours: false,
  }, {
    name: "c-fork",
    about: "C, a process per connection: fork() and blocking calls, TCP only; memory is the " +
      "sum of PSS over its processes (bench/servers/c_fork_server.c; only with --servers)",
    tcp: [cServers.fork],
    ours: false,
    tree: true,
    optIn: true,
  });
  return opts.servers
    ? specs.filter((s) => opts.servers!.includes(s.name))
    : specs.filter((s) => !s.optIn);
}

function log(text: string) {
  console.error(text);
}

async function collect(
  opts: Options,
  specs: ServerSpec[],
  loadgen: string,
): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let run = 1; run <= opts.runs; run++) {
    for (const mode of opts.modes) {
      const transport = mode === "udp" ? "udp" : "tcp";
      // Rotate the order of servers from run to run, so slow drift in the
      // machine's load does not always favour the same one.
      const order = specs.filter((s) => s[transport]);
      for (let i = 0; i < (run - 1) % Math.max(1, order.length); i++) order.push(order.shift()!);
      for (const spec of order) {
        const points = mode === "idle" ? [opts.idleConns] : opts.conns;
        let server: RunningServer | undefined;
        try {
          server = { ...await startServer(spec[transport]!, opts.pin), tree: spec.tree };
          for (const conns of points) {
            const sample: Sample = { run, mode, conns, server: spec.name };
            try {
              if (mode === "idle") sample.idle = await measureIdle(loadgen, server, opts);
              else sample.gen = await measure(loadgen, server, mode, conns, opts);
            } catch (error) {
              sample.failure = (error as Error).message.split("\n")[0];
            }
            samples.push(sample);
            if (opts.verbose) log(describeSample(sample));
          }
        } catch (error) {
          for (const conns of points) {
            const failure = (error as Error).message.split("\n")[0];
            samples.push({ run, mode, conns, server: spec.name, failure });
          }
          if (opts.verbose) log(`run ${run} ${mode} ${spec.name}: ${(error as Error).message}`);
        } finally {
          await server?.stop();
        }
      }
      log(`run ${run}/${opts.runs}: ${mode} done`);
    }
  }
  return samples;
}

function describeSample(s: Sample): string {
  const head = `run ${s.run} ${s.mode} C=${s.conns} ${s.server}:`;
  if (s.failure) return `${head} FAILED ${s.failure}`;
  if (s.idle) {
    return `${head} ${s.idle.kbPerConn.toFixed(2)} KB/conn held, ` +
      `${s.idle.kbPerConnAfter.toFixed(2)} after serving; errors ${errorsOf(s.idle.serve)}`;
  }
  const g = s.gen!;
  return `${head} ${Math.round(g.rps)}/s p50 ${g.p50_us}us p99 ${g.p99_us}us ` +
    `p99.9 ${g.p999_us}us cpu ${g.server_cpu}% gen ${g.gen_cpu}% stalled ${g.stalled} ` +
    `errors ${errorsOf(g)} losses ${g.losses}${g.first_error ? ` (${g.first_error})` : ""}`;
}

function errorsOf(g: GenResult): number {
  return g.errors + g.verify_errors + g.connect_errors;
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

function median(values: number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** One table row: the medians of one (mode, C, server) over the runs. */
interface Row {
  mode: Mode;
  conns: number;
  server: string;
  ok: number;
  runs: number;
  rps: number;
  p50: number;
  p99: number;
  p999: number;
  cpu: number;
  genCpu: number;
  otherCpu: number;
  stalled: number;
  maxGapMs: number;
  errors: number;
  losses: number;
  vsNode: number;
  vsC: number;
  idle?: { kbPerConn: number; kbPerConnAfter: number; baseKb: number; heldKb: number };
  failure?: string;
}

function summarize(samples: Sample[], specs: ServerSpec[], opts: Options): Row[] {
  const rows: Row[] = [];
  const find = (run: number, mode: Mode, conns: number, server: string) =>
    samples.find((s) =>
      s.run === run && s.mode === mode && s.conns === conns && s.server === server
    );
  for (const mode of opts.modes) {
    const points = mode === "idle" ? [opts.idleConns] : opts.conns;
    for (const conns of points) {
      for (const spec of specs) {
        const mine = samples.filter((s) =>
          s.mode === mode && s.conns === conns && s.server === spec.name
        );
        if (mine.length === 0) continue;
        const good = mine.filter((s) => s.gen || s.idle);
        const gens = good.map((s) => s.gen ?? s.idle!.serve);
        // Ratios are taken within each run, then the median over runs.
        const ratio = (other: string) =>
          median(good.map((s) => {
            const o = find(s.run, mode, conns, other);
            const og = o?.gen ?? o?.idle?.serve;
            return og ? (s.gen ?? s.idle!.serve).rps / og.rps : NaN;
          }));
        rows.push({
          mode,
          conns,
          server: spec.name,
          ok: good.length,
          runs: mine.length,
          rps: median(gens.map((g) => g.rps)),
          p50: median(gens.map((g) => g.p50_us)),
          p99: median(gens.map((g) => g.p99_us)),
          p999: median(gens.map((g) => g.p999_us)),
          cpu: median(gens.map((g) => g.server_cpu)),
          genCpu: median(gens.map((g) => g.gen_cpu)),
          otherCpu: median(gens.map((g) => g.other_cpu)),
          stalled: Math.max(0, ...gens.map((g) => g.stalled)),
          maxGapMs: Math.max(0, ...gens.map((g) => g.max_gap_ms)),
          errors: gens.reduce((sum, g) => sum + errorsOf(g), 0),
          losses: gens.reduce((sum, g) => sum + g.losses, 0),
          vsNode: ratio("node"),
          vsC: ratio("c"),
          idle: mode === "idle" && good.length > 0
            ? {
              kbPerConn: median(good.map((s) => s.idle!.kbPerConn)),
              kbPerConnAfter: median(good.map((s) => s.idle!.kbPerConnAfter)),
              baseKb: median(good.map((s) => s.idle!.baseKb)),
              heldKb: median(good.map((s) => s.idle!.heldKb)),
            }
            : undefined,
          failure: mine.find((s) => s.failure)?.failure,
        });
      }
    }
  }
  return rows;
}

const int = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function ms(us: number): string {
  if (!Number.isFinite(us)) return "–";
  return us >= 10_000 ? (us / 1000).toFixed(0) : (us / 1000).toFixed(us >= 1000 ? 1 : 2);
}

function times(ratio: number): string {
  return Number.isFinite(ratio) ? `${ratio.toFixed(2)}x` : "–";
}

function cell(text: string, bold: boolean): string {
  return bold ? `**${text}**` : text;
}

function loadTable(rows: Row[], specs: ServerSpec[]): string[] {
  const ours = new Set(specs.filter((s) => s.ours).map((s) => s.name));
  const out = [
    "| mode | C | server | replies/s | p50 ms | p99 ms | p99.9 ms | server CPU | other load | stalled (max gap ms) | errors / lost | x Node | x C |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows.filter((r) => r.mode !== "idle")) {
    const b = ours.has(r.server);
    if (r.ok === 0) {
      out.push(`| ${r.mode} | ${r.conns} | ${r.server} | failed: ${r.failure} | | | | | | | | | |`);
      continue;
    }
    const partial = r.ok < r.runs ? ` (${r.ok}/${r.runs} runs)` : "";
    out.push(
      `| ${r.mode} | ${r.conns} | ${cell(r.server, b)} | ${
        cell(int.format(r.rps), b)
      }${partial} | ` +
        `${ms(r.p50)} | ${ms(r.p99)} | ${ms(r.p999)} | ${r.cpu.toFixed(0)}% | ` +
        `${r.otherCpu.toFixed(0)}% | ` +
        `${r.stalled} (${r.maxGapMs.toFixed(0)}) | ${r.errors} / ${r.losses} | ` +
        `${cell(times(r.vsNode), b)} | ${cell(times(r.vsC), b)} |`,
    );
  }
  return out;
}

function idleTable(rows: Row[], specs: ServerSpec[], n: number): string[] {
  const ours = new Set(specs.filter((s) => s.ours).map((s) => s.name));
  const out = [
    `| server | KB per idle connection | RSS before | RSS with ${
      int.format(n)
    } idle | KB/conn after serving each once | serve all once: p50 / p99 ms | errors |`,
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows.filter((r) => r.mode === "idle")) {
    const b = ours.has(r.server);
    if (!r.idle) {
      out.push(`| ${r.server} | failed: ${r.failure} | | | | | |`);
      continue;
    }
    const mb = (kb: number) => `${(kb / 1024).toFixed(1)} MB`;
    out.push(
      `| ${cell(r.server, b)} | ${cell(r.idle.kbPerConn.toFixed(2), b)} | ${mb(r.idle.baseKb)} | ` +
        `${mb(r.idle.heldKb)} | ${r.idle.kbPerConnAfter.toFixed(2)} | ${ms(r.p50)} / ${
          ms(r.p99)
        } | ` +
        `${r.errors} |`,
    );
  }
  return out;
}

/** The issue's targets, checked for each of our servers. */
function targetTable(rows: Row[], specs: ServerSpec[], opts: Options): string[] {
  const out = ["| target | server | measured | met |", "| --- | --- | --- | :---: |"];
  const get = (mode: Mode, conns: number, server: string) =>
    rows.find((r) => r.mode === mode && r.conns === conns && r.server === server && r.ok > 0);
  const mark = (ok: boolean) => ok ? "yes" : "**no**";
  for (const spec of specs.filter((s) => s.ours)) {
    const name = spec.name;
    for (const c of [16, 256].filter((c) => opts.conns.includes(c))) {
      const r = get("tcp", c, name);
      if (!r) continue;
      const okNode = r.vsNode >= 1.5, okC = r.vsC >= 0.7;
      // A window shorter than 2 s cannot show a 1 s stall: then a connection
      // silent for most of the window counts as stalled.
      const stallMs = Math.min(1000, opts.duration * 500);
      const okTail = r.p999 < 10_000, okStall = r.stalled === 0 && r.maxGapMs < stallMs;
      out.push(
        `| TCP persistent C=${c}: >= 1.5x Node, >= 0.7x C | ${name} | ${times(r.vsNode)} Node, ${
          times(r.vsC)
        } C | ${mark(okNode && okC)} |`,
        `| TCP persistent C=${c}: p99.9 < 10 ms, no stalled connection | ${name} | p99.9 ${
          ms(r.p999)
        } ms, ${r.stalled} stalled (max gap ${r.maxGapMs.toFixed(0)} ms) | ${
          mark(okTail && okStall)
        } |`,
      );
    }
    for (const c of opts.conns) {
      const r = get("conn", c, name);
      if (!r) continue;
      out.push(
        `| TCP connection per line C=${c}: >= 1.5x Node | ${name} | ${times(r.vsNode)} Node | ${
          mark(r.vsNode >= 1.5)
        } |`,
      );
    }
    for (const c of [16, 256].filter((c) => opts.conns.includes(c))) {
      const r = get("udp", c, name);
      const py = get("udp", c, "py-textbook");
      if (!r || !py) continue;
      const ratio = r.rps / py.rps;
      out.push(
        `| UDP C=${c}: >= textbook Python | ${name} | ${times(ratio)} textbook Python (${
          times(r.vsNode)
        } Node) | ${mark(ratio >= 1)} |`,
      );
    }
    const idle = get("idle", opts.idleConns, name);
    if (idle?.idle) {
      out.push(
        `| ${int.format(opts.idleConns)} idle TCP connections: <= 4 KB each | ${name} | ${
          idle.idle.kbPerConn.toFixed(2)
        } KB | ${mark(idle.idle.kbPerConn <= 4)} |`,
      );
    }
  }
  return out;
}

/** Shows that the generator outran every one of our servers: it drove C faster. */
function generatorCheck(rows: Row[], specs: ServerSpec[]): string[] {
  const out: string[] = [];
  for (const r of rows.filter((r) => r.server === "c" && r.mode !== "idle" && r.ok > 0)) {
    const ours = rows.filter((o) =>
      o.mode === r.mode && o.conns === r.conns && o.ok > 0 &&
      specs.find((s) => s.name === o.server)?.ours
    );
    if (ours.length === 0) continue;
    const best = Math.max(...ours.map((o) => o.rps));
    // With one connection every server waits for the round trip: the
    // generator is not busy, so it cannot be what limits anyone.
    const verdict = r.rps > best
      ? "ok"
      : r.genCpu < 90
      ? `ok: the generator is not saturated (round-trip bound)`
      : "**the generator is saturated: this point cannot rank servers faster than C**";
    out.push(
      `${r.mode} C=${r.conns}: C server ${int.format(r.rps)}/s (generator CPU ${
        r.genCpu.toFixed(0)
      }%) vs best of ours ${int.format(best)}/s: ${verdict}`,
    );
  }
  return out;
}

async function main(args: string[]): Promise<number> {
  let opts: Options | undefined;
  try {
    opts = parseOptions(args);
  } catch (error) {
    console.error(`error: ${(error as Error).message} (see --help)`);
    return 2;
  }
  if (!opts) return 0;
  const started = Date.now();

  if (!(await available(["gcc", "--version"]))) {
    console.error("error: gcc is needed to build the load generator (apt-get install gcc)");
    return 1;
  }
  const loadgen = await compile("loadgen.c", "loadgen");
  const cServers = {
    epoll: await compile("servers/c_server.c", "c_server"),
    fork: await compile("servers/c_fork_server.c", "c_fork_server"),
  };
  const cores = navigator.hardwareConcurrency;
  let pinNote = "server on core 0, generator on core 1 (taskset)";
  if (opts.pin && (cores < 2 || !(await available(["taskset", "-c", "0", "true"])))) {
    opts.pin = false;
    pinNote = cores < 2 ? "NOT pinned: only one core" : "NOT pinned: taskset is not available";
  } else if (!opts.pin) {
    pinNote = "NOT pinned (--no-pin)";
  }
  const python = await pythonPath();
  if (!(await available(["node", "--version"]))) log("warning: node not found; no Node reference");
  const specs = serverSpecs(opts, python, cServers);
  const load0 = Deno.loadavg();
  log(
    `bench: ${opts.runs} run(s), ${opts.duration} s per point after ${opts.warmup} s warm-up; ` +
      `servers: ${specs.map((s) => s.name).join(", ")}; ${pinNote}`,
  );

  const samples = await collect(opts, specs, loadgen);
  const rows = summarize(samples, specs, opts);
  const load1 = Deno.loadavg();
  if (opts.json) {
    Deno.writeTextFileSync(opts.json, JSON.stringify({ opts, samples, rows }, null, 2));
  }

  const seconds = ((Date.now() - started) / 1000).toFixed(0);
  const versions = [
    `deno ${Deno.version.deno}`,
    await versionOf(["node", "--version"]).then((v) => `node ${v.replace(/^v/, "")}`),
    python ? await versionOf([python, "--version"]) : "python: missing",
    await versionOf(["gcc", "-dumpfullversion"]).then((v) => `gcc ${v}`),
  ];
  const lines = [
    `## Benchmark: ${opts.quick ? "quick run" : `median of ${opts.runs} runs`}`,
    "",
    `Command: \`deno task bench${args.length ? " " + args.join(" ") : ""}\` (${seconds} s). ` +
    `${cores} cores, ${pinNote}; ${versions.join(", ")}; Linux ${Deno.osRelease()}. ` +
    `Load average before/after: ${load0[0].toFixed(2)} / ${load1[0].toFixed(2)}. ` +
    `Each point: ${opts.warmup} s warm-up, ${opts.duration} s measured; 64-byte lines; ` +
    `every reply verified.`,
    "",
  ];
  if (opts.modes.some((m) => m !== "idle")) {
    lines.push(
      ...loadTable(rows, specs),
      "",
      "replies/s, latencies and CPU are medians over runs (CPU: server process, % of one core); " +
        "x Node and x C are ratios within each run, then the median. other load: CPU used " +
        "by other processes meanwhile (noise; a point above " + `${opts.maxNoise}% ` +
        `is measured again, up to ${opts.retries} times). stalled: connections with ` +
        "no reply for over 1 s (worst run), with the longest gap. errors: failed or wrong " +
        "replies; lost: UDP requests without a reply within 100 ms. The load generator and " +
        "the C server are single-threaded epoll loops.",
      "",
    );
  }
  if (opts.modes.includes("idle")) lines.push(...idleTable(rows, specs, opts.idleConns), "");
  lines.push("### Targets (issue 5)", "", ...targetTable(rows, specs, opts), "");
  const check = generatorCheck(rows, specs);
  if (check.length) lines.push("### Generator check", "", ...check.map((c) => `- ${c}`), "");
  lines.push("### Modes", "", ...opts.modes.map((m) => `- **${m}**: ${MODE_TITLES[m]}`), "");
  lines.push("### Servers", "", ...specs.map((s) => `- **${s.name}**: ${s.about}`));
  console.log(lines.join("\n"));
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
