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
import { readToEnd, tcpRequest, udpRequest, withDeadline, writeAll } from "./grading/net.ts";
import { ProgramProcess, shellQuote } from "./grading/process.ts";

// The byte comparisons, deadlines, raw exchanges, port reservations and the
// process runner live in the grading kit, which stands on its own; the tests
// use the same ones, and add only the glue below.
export { assertBytes, escapeBytes, expectedReply, readToEnd, utf8, withDeadline, writeAll };
export { type FixedPort, reserveFixedPort } from "./grading/ports.ts";

/** The project folder (where deno.json lives). */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

/** Permissions for a test that only uses the network in-process. */
export const NET = { net: true } as const;

/** Permissions for a test that also runs a program as a subprocess. */
export const SUBPROCESS = { net: true, run: true, read: true, env: true } as const;

/**
 * Makes a temporary folder with `mktemp -d`: the tests run without
 * --allow-write, and the programs they start write there.
 */
export async function tempDir(): Promise<string> {
  const { stdout } = await new Deno.Command("mktemp", { args: ["-d"], stdout: "piped" }).output();
  return new TextDecoder().decode(stdout).trim();
}

/** Removes a folder made by {@linkcode tempDir}, and everything in it. */
export async function removeDir(dir: string): Promise<void> {
  await new Deno.Command("rm", { args: ["-rf", dir] }).output();
}

/**
 * Resolves once `condition()` is true, checking every 10 ms; rejects after
 * `ms` with `what()` in the message (a function, so it says how far it got).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const log: string[] = [];
 * setTimeout(() => log.push("one", "two"), 20);
 * await waitUntil(() => log.length >= 2, 2000, () => `2 log lines, have ${log.length}`);
 * assert.deepEqual(log, ["one", "two"]);
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
  /** Address to listen on. */
  hostname?: string;
  /** Port to listen on; withServer passes 0. */
  port?: number;
  /** Aborting shuts the server down. */
  signal?: AbortSignal;
  /** Where log lines go. */
  log?: ((line: string) => void) | null;
}

/**
 * Starts a server in-process on a free port, runs `body` with the port and
 * the server's log lines, then shuts the server down and waits until every
 * socket is closed, so nothing outlives the test.
 *
 * @example
 * ```ts ignore
 * // ignore: it starts one of this project's servers, whose options belong to it;
 * // every tests/*_server_test.ts uses it.
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
 * import assert from "node:assert/strict";
 *
 * const log = [
 *   "Served 127.0.0.1:5: 2 bytes in, 2 bytes out",
 *   "... and 3 more served in the last second",
 * ];
 * assert.equal(servedCount(log), 4);
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
  /** Words before `deno run`: a command that runs it elsewhere (`nsenter -t PID -n`). */
  prefix?: string[];
}

/**
 * One of this project's programs running as a real subprocess
 * (`Deno.execPath()`), through the grading kit's runner
 * ({@linkcode ProgramProcess}): its own process group, reaped and killed at
 * the end. What the tests add: the output split into lines as it arrives,
 * waits for a line, and the ready line's port.
 *
 * @example
 * ```ts ignore
 * // ignore: starts a server; the tests in tests/tcp_server_test.ts do this.
 * await using server = Program.start("tcp_server.ts", ["--port", "0"]);
 * const port = await server.readyPort();
 * ```
 */
export class Program implements AsyncDisposable {
  /** The kit's process, for anything not wrapped here. */
  readonly process: ProgramProcess;
  /** Every stdout line so far; the array grows as lines arrive. */
  readonly stdoutLines: string[] = [];
  /** Everything on stderr so far. */
  stderr = "";

  private constructor(command: string, input?: string) {
    const stdout = lineSplitter((line) => this.stdoutLines.push(line));
    const stderr = lineSplitter((line) => this.stderr += line + "\n");
    this.process = ProgramProcess.spawn({
      // exec: the program itself leads its process group and gets the signals.
      command: `exec ${command}`,
      cwd: ROOT,
      input: input === undefined ? undefined : utf8(input),
      onOutput: (stream, chunk) => (stream === "stdout" ? stdout : stderr)(chunk),
    });
  }

  /** Starts `script` (relative to the project folder) with `args`. */
  static start(script: string, args: string[] = [], options: StartOptions = {}): Program {
    const { flags = ["--allow-net"], input, prefix = [] } = options;
    const words = [
      ...prefix,
      Deno.execPath(),
      "run",
      "--no-prompt",
      ...flags,
      `${ROOT}${script}`,
      ...args,
    ];
    return new Program(words.map(shellQuote).join(" "), input);
  }

  /** The program's process id. */
  get pid(): number {
    return this.process.pid;
  }

  #find(pattern: RegExp): RegExpMatchArray | undefined {
    for (const line of this.stdoutLines) {
      const match = line.match(pattern);
      if (match) return match;
    }
    return undefined;
  }

  /** Resolves to the first stdout line matching `pattern`, within `ms`. */
  async waitForLine(pattern: RegExp, ms = 5000): Promise<RegExpMatchArray> {
    await this.process.waitUntil(() => this.#find(pattern) !== undefined, ms);
    // An exit can overtake the last output: let the pipes drain first.
    if (!this.process.running) await this.process.drain(1000);
    const match = this.#find(pattern);
    if (match) return match;
    if (!this.process.running) {
      throw new Error(`Exited without printing ${pattern}:\n${this.output()}`);
    }
    throw new Error(`Deadline: waiting for ${pattern} took over ${ms} ms\n${this.output()}`);
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

  /** Sends a signal (default SIGTERM) if the program is still running. */
  kill(signal: Deno.Signal = "SIGTERM") {
    this.process.kill(signal);
  }

  /** Waits for the exit within `ms` (then kills it) and returns its status and output. */
  async finish(ms = 5000): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      await withDeadline(this.process.exited, ms, `the program to exit\n${this.output()}`);
    } catch (error) {
      await this.process.stop();
      throw error;
    }
    const { code } = await this.process.stop();
    return { code, stdout: this.stdoutLines.join("\n"), stderr: this.stderr };
  }

  /** Kills the program if it is still running and reaps it. */
  async [Symbol.asyncDispose]() {
    await this.process.stop();
  }
}

/** Splits a byte stream into lines of text (UTF-8), calling `onLine` for each. */
function lineSplitter(onLine: (line: string) => void): (chunk: Uint8Array | null) => void {
  const decoder = new TextDecoder();
  let rest = "";
  return (chunk) => {
    const parts = (rest + decoder.decode(chunk ?? undefined, { stream: chunk !== null })).split(
      "\n",
    );
    rest = parts.pop()!;
    parts.forEach(onLine);
    if (chunk === null && rest) onLine(rest);
  };
}

/** The first words of every program's error for a missing --allow-net. */
export const NO_NET_ERROR = /^error: Network access is not allowed: run again with the --allow-net/;

/**
 * Runs a program that must fail at once, and asserts its exit code and that
 * it explained why on exactly one line of stderr matching `pattern` (no stack
 * trace). Resolves to that line.
 *
 * @example
 * ```ts ignore
 * // ignore: it runs one of this project's programs, whose messages belong to it;
 * // tests/tcp_client_test.ts and the others use it.
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
  /** The server's address; default 127.0.0.1. */
  hostname?: string;
  /** The server's port. */
  port: number;
  /** The request, as one buffer or as chunks written one by one. */
  chunks: Uint8Array[];
  /** Milliseconds to wait between chunks, so they arrive in separate reads. */
  gapMs?: number;
  /** Deadline for the whole exchange. */
  ms?: number;
}

/**
 * The kit's {@linkcode tcpRequest} as a test wants it: connects, writes the
 * chunks, half-closes, and resolves to the whole reply; throws unless the
 * server ended the reply by closing the connection (ConnectionRefused,
 * ConnectionReset, or an Error that says why).
 *
 * @example
 * ```ts ignore
 * // ignore: needs a server; tests/tcp_server_test.ts starts one.
 * const reply = await tcpExchange({ port, chunks: [utf8("hi")] });
 * ```
 */
export async function tcpExchange(options: TcpExchangeOptions): Promise<Uint8Array> {
  const { hostname = "127.0.0.1", port, chunks, gapMs, ms = 5000 } = options;
  const outcome = await tcpRequest({ address: { hostname, port }, chunks, gapMs, ms });
  if (outcome.end === "eof" && !outcome.problem) return outcome.data;
  // The error classes Deno.connect would throw, so a test can tell them apart.
  const message = `TCP exchange with port ${port}: ${outcome.problem ?? outcome.end}`;
  switch (outcome.end) {
    case "refused":
      throw new Deno.errors.ConnectionRefused(message);
    case "reset":
      throw new Deno.errors.ConnectionReset(message);
    case "timeout":
      throw new Error(`Deadline: ${message}`);
    default:
      throw new Error(message);
  }
}

/**
 * The kit's {@linkcode udpRequest} as a test wants it: sends one datagram
 * from a fresh socket and resolves to the reply and its sender, or undefined
 * if nothing came within `ms`.
 *
 * @example
 * ```ts ignore
 * // ignore: needs a server; tests/udp_server_test.ts starts one.
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
  const { reply, from } = await udpRequest({ address: { hostname, port }, data, ms });
  return reply && from ? { data: reply, from } : undefined;
}

/**
 * A stub TCP server on 127.0.0.1 for client tests: accepts one connection,
 * answers it through `answer` (or never, if that never settles), closes it,
 * and runs `body` with its port meanwhile.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * await withStub(async (conn) => void await conn.write(new TextEncoder().encode("HI")), async (port) => {
 *   const conn = await Deno.connect({ hostname: "127.0.0.1", port });
 *   const buffer = new Uint8Array(2);
 *   assert.equal(await conn.read(buffer), 2);
 *   conn.close();
 * });
 * ```
 */
export async function withStub(
  answer: (conn: Deno.TcpConn) => Promise<void>,
  body: (port: number) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    const conn = await listener.accept();
    try {
      await answer(conn);
    } catch {
      // The client may close first; the test body decides what is right.
    } finally {
      conn.close();
    }
  })();
  try {
    await body(listener.addr.port);
  } finally {
    listener.close();
    await served;
  }
}
