/**
 * Shared test helpers: run a program as a real subprocess, wait for its lines
 * with deadlines, and talk raw TCP and UDP to a server byte for byte.
 *
 * Every wait has a deadline, every child is killed and reaped, and every
 * socket is closed, so the suite passes `--sanitize-ops --sanitize-resources`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { assertBytes, escapeBytes, expectedReply, utf8 } from "./grading/compare.ts";
import { withDeadline } from "./grading/net.ts";

// The byte comparisons, deadlines and port reservations live in the grading
// kit, which stands on its own; the tests use the same ones.
export { assertBytes, escapeBytes, expectedReply, utf8, withDeadline };
export { type FixedPort, reserveFixedPort } from "./grading/ports.ts";

/** The project folder (where deno.json lives). */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Permissions for a test that only uses the network in-process. */
export const NET = { net: true } as const;

/** Permissions for a test that also runs a program as a subprocess. */
export const SUBPROCESS = { net: true, run: true, read: true, env: true } as const;

/**
 * Resolves once `condition()` is true, checking every 10 ms; rejects after
 * `ms` with `what()` in the message (a function, so it says how far it got).
 *
 * @example
 * ```ts
 * await waitUntil(() => log.length >= 2, 2000, () => `2 log lines, have ${log.length}`);
 * ```
 */
export async function waitUntil(condition: () => boolean, ms: number, what: () => string) {
  const stopAt = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > stopAt) throw new Error(`Deadline: waited ${ms} ms for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** What the servers' start functions take (startTcpServer, startUdpServer). */
export interface InProcessOptions {
  hostname?: string;
  port?: number;
  signal?: AbortSignal;
  log?: ((line: string) => void) | null;
}

/**
 * Starts a server in-process on a free port, runs `body` with the port and
 * the server's log lines, then shuts the server down and waits until every
 * socket is closed, so nothing outlives the test.
 *
 * @example
 * ```ts
 * await withServer(startTcpServer, { idleTimeout: 1 }, async (port, log) => {
 *   // talk to 127.0.0.1:port
 * });
 * ```
 */
export async function withServer<O extends InProcessOptions>(
  start: (options?: O) => Promise<{ addrs: Deno.NetAddr[]; finished: Promise<void> }>,
  options: Omit<NoInfer<O>, "signal" | "log">,
  body: (port: number, log: string[]) => Promise<void>,
): Promise<void> {
  const log: string[] = [];
  const controller = new AbortController();
  const full: InProcessOptions = {
    port: 0,
    ...options,
    log: (line: string) => log.push(line),
    signal: controller.signal,
  };
  const server = await start(full as O);
  try {
    await body(server.addrs[0].port, log);
  } finally {
    controller.abort();
    await withDeadline(server.finished, 5000, "server shutdown");
  }
}

/**
 * How many exchanges a server's log says it served: its "Served" lines, plus
 * the counts of its summary lines ("... and 5321 more served in the last
 * second", "... and 12 more datagrams served in the last second").
 *
 * @example
 * ```ts
 * servedCount(["Served 127.0.0.1:5: 2 bytes in, 2 bytes out", "... and 3 more served in the last second"]); // 4
 * ```
 */
export function servedCount(log: string[]): number {
  let count = 0;
  for (const line of log) {
    if (line.startsWith("Served ")) count++;
    const more = /^\.\.\. and (\d+) more (?:datagrams )?served in the last second$/.exec(line);
    if (more) count += Number(more[1]);
  }
  return count;
}

/** Options for {@linkcode Program.start}. */
export interface StartOptions {
  /** Deno flags; default `["--allow-net"]`. */
  flags?: string[];
  /** Standard input: "null" (default) or "piped" with this text written and closed. */
  input?: string;
}

/**
 * A program running as a real subprocess (`Deno.execPath()`), with its output
 * collected line by line.
 *
 * @example
 * ```ts
 * await using server = Program.start("tcp_server.ts", ["--port", "0"]);
 * const port = await server.readyPort();
 * ```
 */
export class Program implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly stdoutLines: string[] = [];
  stderr = "";
  #waiters = new Set<() => void>();
  #pumps: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #closed = false;

  private constructor(child: Deno.ChildProcess, input?: string) {
    this.child = child;
    this.#pumps = Promise.all([
      this.#pump(child.stdout, (line) => this.stdoutLines.push(line)),
      this.#pump(child.stderr, (line) => this.stderr += line + "\n"),
      input === undefined ? Promise.resolve() : this.#feed(input),
    ]).then(() => {});
    this.#status = child.status;
  }

  /** Starts `script` (relative to the project folder) with `args`. */
  static start(script: string, args: string[] = [], options: StartOptions = {}): Program {
    const { flags = ["--allow-net"], input } = options;
    const env = Deno.env.toObject();
    delete env.RUST_BACKTRACE; // it adds backtraces to Deno's own errors
    env.NO_COLOR = "1";
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...flags, `${ROOT}${script}`, ...args],
      cwd: ROOT,
      clearEnv: true,
      env,
      stdin: input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    return new Program(child, input);
  }

  async #feed(input: string) {
    const writer = this.child.stdin.getWriter();
    try {
      await writer.write(utf8(input));
      await writer.close();
    } catch {
      // The program exited before reading its input; its status tells why.
    }
  }

  async #pump(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void) {
    let rest = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + text).split("\n");
      rest = parts.pop()!;
      parts.forEach(onLine);
      this.#notify();
    }
    if (rest) onLine(rest);
    this.#notify();
  }

  #notify() {
    for (const wake of this.#waiters) wake();
  }

  /** Resolves to the first stdout line matching `pattern`, within `ms`. */
  waitForLine(pattern: RegExp, ms = 5000): Promise<RegExpMatchArray> {
    const find = () => {
      for (const line of this.stdoutLines) {
        const match = line.match(pattern);
        if (match) return match;
      }
      return undefined;
    };
    const found = new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const match = find();
        if (match) {
          this.#waiters.delete(check);
          resolve(match);
        }
      };
      this.#waiters.add(check);
      check();
      // If the program exits first, say so instead of waiting for the deadline.
      this.#pumps.then(() => {
        if (!find()) {
          this.#waiters.delete(check);
          reject(new Error(`Exited without printing ${pattern}:\n${this.output()}`));
        }
      });
    });
    return withDeadline(found, ms, `waiting for ${pattern}\n${this.output()}`);
  }

  /** Waits for the ready line and resolves to the bound port. */
  async readyPort(ms = 5000): Promise<number> {
    const match = await this.waitForLine(/^The server is ready to receive on \S+:(\d+)/, ms);
    return Number(match[1]);
  }

  /** Everything printed so far, for failure messages. */
  output(): string {
    return `--- stdout\n${this.stdoutLines.join("\n")}\n--- stderr\n${this.stderr}`;
  }

  /** Sends a signal if the program is still running. */
  kill(signal: Deno.Signal = "SIGTERM") {
    try {
      this.child.kill(signal);
    } catch {
      // Already exited.
    }
  }

  /** Waits for the exit within `ms` (then kills it) and returns its status and output. */
  async finish(ms = 5000): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      await withDeadline(this.#status, ms, `the program to exit\n${this.output()}`);
    } catch (error) {
      this.kill("SIGKILL");
      await this.#close();
      throw error;
    }
    await this.#close();
    const { code } = await this.#status;
    return { code, stdout: this.stdoutLines.join("\n"), stderr: this.stderr };
  }

  async #close() {
    if (this.#closed) return;
    this.#closed = true;
    await this.#status;
    await this.#pumps;
  }

  /** Kills the program if it is still running and reaps it. */
  async [Symbol.asyncDispose]() {
    this.kill("SIGKILL");
    await this.#close();
  }
}

/** The first words of every program's error for a missing --allow-net. */
export const NO_NET_ERROR = /^error: Network access is not allowed: run again with the --allow-net/;

/**
 * Runs a program that must fail at once, and asserts its exit code and that
 * it explained why on exactly one line of stderr matching `pattern` (no stack
 * trace). Resolves to that line.
 *
 * @example
 * ```ts
 * await expectOneLineError("tcp_client.ts", ["--port", "abc"], { code: 2, pattern: /--port/ });
 * ```
 */
export async function expectOneLineError(
  script: string,
  args: string[],
  expected: { code: number; pattern: RegExp; flags?: string[] },
): Promise<string> {
  const { flags } = expected;
  const { code, stderr } = await Program.start(script, args, flags ? { flags } : {}).finish();
  const lines = stderr.trim().split("\n");
  assert.equal(code, expected.code, `exit code, with stderr:\n${stderr}`);
  assert.equal(lines.length, 1, `one line of stderr, got:\n${stderr}`);
  assert.match(lines[0], expected.pattern);
  return lines[0];
}

/** Options for {@linkcode tcpExchange}. */
export interface TcpExchangeOptions {
  hostname?: string;
  port: number;
  /** The request, as one buffer or as chunks written one by one. */
  chunks: Uint8Array[];
  /** Milliseconds to wait between chunks, so they arrive in separate reads. */
  gapMs?: number;
  /** Deadline for the whole exchange. */
  ms?: number;
}

/**
 * Connects, writes the chunks, half-closes, and reads the reply to the end.
 *
 * @example
 * ```ts
 * const reply = await tcpExchange({ port, chunks: [utf8("hi")] });
 * ```
 */
export async function tcpExchange(options: TcpExchangeOptions): Promise<Uint8Array> {
  const { hostname = "127.0.0.1", port, chunks, gapMs = 0, ms = 5000 } = options;
  const conn = await Deno.connect({ hostname, port });
  try {
    return await withDeadline(
      (async () => {
        conn.setNoDelay(true);
        const reading = readToEnd(conn);
        for (const [i, chunk] of chunks.entries()) {
          if (i > 0 && gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
          await writeAll(conn, chunk);
        }
        await conn.closeWrite();
        return await reading;
      })(),
      ms,
      `TCP exchange with port ${port}`,
    );
  } finally {
    conn.close();
  }
}

/** Writes every byte of `data`. */
export async function writeAll(conn: Deno.Conn, data: Uint8Array) {
  let written = 0;
  while (written < data.length) written += await conn.write(data.subarray(written));
}

/** Reads until end of stream. */
export async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    parts.push(buffer.slice(0, n));
  }
  const all = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  return all;
}

/**
 * Sends one datagram from a fresh socket and resolves to the reply and its
 * sender, or undefined if nothing came within `ms`.
 *
 * @example
 * ```ts
 * const reply = await udpExchange({ port, data: utf8("hi") });
 * ```
 */
export async function udpExchange(
  { hostname = "127.0.0.1", port, data, ms = 2000 }: {
    hostname?: string;
    port: number;
    data: Uint8Array;
    ms?: number;
  },
): Promise<{ data: Uint8Array; from: Deno.NetAddr } | undefined> {
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: hostname.includes(":") ? "::1" : "127.0.0.1",
    port: 0,
  });
  const receiving = socket.receive(new Uint8Array(65536));
  try {
    await socket.send(data, { transport: "udp", hostname, port });
    const [reply, from] = await withDeadline(receiving, ms, `UDP reply from port ${port}`);
    return { data: reply, from: from as Deno.NetAddr };
  } catch (error) {
    if (error instanceof Error && error.message.startsWith("Deadline")) return undefined;
    throw error;
  } finally {
    socket.close();
    await receiving.catch(() => {});
  }
}
