/**
 * Runs the grading checks for one role: starts the server under test (and
 * waits until it is ready) or runs the client under test, and turns each
 * check's outcome into a result with a readable explanation.
 *
 * A server whose template has `{port}` is started afresh for every check, on
 * a free port. A server without `{port}` must use the fixed port, so it is
 * started once and reused (restarted only if it died): restarting it at once
 * could fail, because the connections it closed keep the port in TIME_WAIT
 * and the textbook server does not set SO_REUSEADDR.
 *
 * @module
 */
import {
  fillTemplate,
  type GradeConfig,
  LOOPBACK,
  type Role,
  ROLE_ENV,
  ROLE_LABEL,
  usesPortPlaceholder,
} from "./config.ts";
import {
  type Check,
  type CheckId,
  checksFor,
  type ClientContext,
  type ClientRun,
  type ServerContext,
} from "./checks.ts";
import { CheckFailure, indexOfBytes } from "./compare.ts";
import { type Address, portBecomesFree, probeTcp, probeUdp } from "./net.ts";
import { ProgramProcess } from "./process.ts";
import { type FixedPort, reserveFixedPort } from "./ports.ts";

/** The outcome of one check. */
export interface CheckResult {
  role: Role;
  id: CheckId;
  /** "TCP server: basic ASCII sentence". */
  name: string;
  passed: boolean;
  /** Why it passed, or why it failed (with a diff, the program's output and a hint). */
  output: string;
  ms: number;
}

/** A server under test that is ready. */
interface RunningServer {
  program: ProgramProcess;
  address: Address;
  exited: AbortController;
  /** The port it was given, held until it stops (none on the shared fixed port). */
  reserved: FixedPort | undefined;
}

/** Options for {@linkcode RoleRunner}. */
export interface RoleRunnerOptions {
  role: Role;
  config: GradeConfig;
}

/**
 * Runs the checks of one role against the program its template names.
 *
 * @example
 * ```ts
 * const runner = new RoleRunner({ role: "tcp_server", config: loadConfig() });
 * for (const check of runner.checks) console.log((await runner.run(check)).passed);
 * await runner.close();
 * ```
 */
export class RoleRunner implements AsyncDisposable {
  readonly role: Role;
  readonly template: string;
  readonly transport: "tcp" | "udp";
  /** Whether one server process serves every check (its template has no {port}). */
  readonly shared: boolean;
  /** The checks of this role, in order. */
  readonly checks: readonly Check[];
  #config: GradeConfig;
  #server: RunningServer | undefined;
  /** Why the server was not ready within the deadline, once: later checks fail at once. */
  #neverReady: string | undefined;

  constructor(options: RoleRunnerOptions) {
    const { role, config } = options;
    this.role = role;
    this.#config = config;
    this.template = config.templates[role];
    this.transport = role.startsWith("tcp") ? "tcp" : "udp";
    this.shared = role.endsWith("server") && !usesPortPlaceholder(this.template);
    this.checks = checksFor(role);
  }

  /** The test name of a check: "TCP server: basic ASCII sentence". */
  nameOf(check: Check): string {
    return `${ROLE_LABEL[this.role]}: ${check.title}`;
  }

  /** Runs one check; never throws. */
  async run(check: Check): Promise<CheckResult> {
    const started = performance.now();
    let passed = false;
    let output: string;
    try {
      output = check.side === "server"
        ? await this.#runServerCheck(check.run)
        : await this.#runClientCheck(check.run);
      passed = true;
    } catch (error) {
      output = error instanceof CheckFailure
        ? error.message
        : `the check itself failed: ${(error as Error)?.stack ?? String(error)}`;
      output += `\nHint: ${check.hint}`;
    }
    const ms = Math.round(performance.now() - started);
    return { role: this.role, id: check.id, name: this.nameOf(check), passed, output, ms };
  }

  /** Runs every check in order, then stops the server under test. */
  async runAll(): Promise<CheckResult[]> {
    const results: CheckResult[] = [];
    try {
      for (const check of this.checks) results.push(await this.run(check));
    } finally {
      await this.close();
    }
    return results;
  }

  /** Stops the server under test, if one is running. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    await server.program.stop();
    server.reserved?.[Symbol.dispose]();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // --- servers ------------------------------------------------------------

  async #runServerCheck(run: (context: ServerContext) => Promise<string>): Promise<string> {
    const server = await this.#acquireServer();
    try {
      return await run({
        transport: this.transport,
        address: server.address,
        server: server.program,
        serverExited: server.exited.signal,
        // A reused server on a fixed port must not be left with TIME_WAIT on it.
        halfCloseDelayMs: this.shared ? 100 : 0,
      });
    } catch (error) {
      if (!(error instanceof CheckFailure)) throw error;
      // A crash is often the reason: give a dying server a moment to be reaped.
      await server.program.waitUntil(() => !server.program.running, 300);
      if (!server.program.running) await server.program.drain(500);
      throw new CheckFailure(
        `${error.message}\nThe server under test (${this.#describeCommand(server.program)}) ` +
          `${server.program.describeExit()}.\n${server.program.outputTail()}`,
      );
    } finally {
      if (!this.shared || !server.program.running) await this.close();
    }
  }

  /** The running server, or a new one once it is ready. */
  async #acquireServer(): Promise<RunningServer> {
    if (this.#server?.program.running) return this.#server;
    await this.close();
    if (this.#neverReady) {
      throw new CheckFailure(
        `not run: the server under test was not ready in an earlier check\n${this.#neverReady}`,
      );
    }
    const reserved = this.shared ? undefined : await reserveFixedPort();
    const port = reserved?.port ?? this.#config.fixedPort;
    if (this.shared && !await portBecomesFree(this.transport, port)) {
      throw new CheckFailure(await this.#portInUse(port, "the server under test cannot bind it"));
    }
    let program: ProgramProcess | undefined;
    try {
      program = ProgramProcess.spawn({
        command: fillTemplate(this.template, { host: LOOPBACK, port }),
        cwd: this.#config.cwd,
      });
      const exited = new AbortController();
      program.exited.then(() => exited.abort());
      const address = await this.#waitReady(program, port);
      this.#server = { program, address, exited, reserved };
      return this.#server;
    } catch (error) {
      await program?.stop();
      reserved?.[Symbol.dispose]();
      throw error;
    }
  }

  /**
   * Ready when the server accepts a TCP connection (answers a UDP probe) on
   * 127.0.0.1 or ::1, or prints a line, whichever comes first.
   */
  async #waitReady(program: ProgramProcess, port: number): Promise<Address> {
    const ms = this.#config.readyDeadlineMs;
    const deadline = performance.now() + ms;
    const printedLine = () => program.stdoutBytes().includes(0x0a);
    while (performance.now() < deadline) {
      if (!program.running) {
        await program.drain(500);
        throw new CheckFailure(
          `the server under test (${this.#describeCommand(program)}) ` +
            `${program.describeExit()} before it was ready\n${program.outputTail()}`,
        );
      }
      const hostname = this.transport === "tcp"
        ? await probeTcp(port, 500)
        : await probeUdp(port, 40);
      if (hostname) return { hostname, port };
      if (printedLine()) return { hostname: LOOPBACK, port };
      await program.waitUntil(() => printedLine() || !program.running, 25);
    }
    this.#neverReady = `the server under test (${this.#describeCommand(program)}) was not ` +
      `ready within ${ms / 1000} s`;
    throw new CheckFailure(
      `the server under test (${this.#describeCommand(program)}) was not ready within ` +
        `${ms / 1000} s: it neither ${
          this.transport === "tcp" ? "accepted a connection" : "answered a probe datagram"
        } on port ${port} of 127.0.0.1 or ::1 nor printed a line\n${program.outputTail()}`,
    );
  }

  // --- clients ------------------------------------------------------------

  async #runClientCheck(run: (context: ClientContext) => Promise<string>): Promise<string> {
    const listenPort = usesPortPlaceholder(this.template) ? 0 : this.#config.fixedPort;
    if (listenPort !== 0 && !await portBecomesFree(this.transport, listenPort)) {
      throw new CheckFailure(
        await this.#portInUse(listenPort, "the harness cannot serve the client"),
      );
    }
    let last: ClientRun | undefined;
    const context: ClientContext = {
      transport: this.transport,
      listenPort,
      deadlineMs: this.#config.clientDeadlineMs,
      runClient: async (options) => {
        last = await this.#runClient(options);
        return last;
      },
    };
    try {
      return await run(context);
    } catch (error) {
      if (!(error instanceof CheckFailure) || last === undefined) throw error;
      throw new CheckFailure(
        `${error.message}\nThe client under test: ${this.#describeCommand(last.program)}\n` +
          last.program.outputTail(),
      );
    }
  }

  async #runClient(
    options: { port: number; input: string; expect?: Uint8Array },
  ): Promise<ClientRun> {
    const { port, input, expect } = options;
    const started = performance.now();
    const program = ProgramProcess.spawn({
      command: fillTemplate(this.template, { host: LOOPBACK, port }),
      cwd: this.#config.cwd,
      input: new TextEncoder().encode(input),
    });
    try {
      // The reply is looked for in the first 256 KiB of output: enough for any check.
      const found = () =>
        expect !== undefined &&
        indexOfBytes(program.stdoutBytes().subarray(0, 256 * 1024), expect) >= 0;
      await program.waitUntil(() => found() || !program.running, this.#config.clientDeadlineMs);
      const ms = Math.round(performance.now() - started);
      const exitedOnItsOwn = !program.running;
      if (exitedOnItsOwn) await program.drain(500); // the last of its output
      return { found: found(), exitedOnItsOwn, ms, program };
    } finally {
      await program.stop();
    }
  }

  // --- messages -----------------------------------------------------------

  #describeCommand(program: ProgramProcess): string {
    const given = this.#config.submitted.includes(this.role)
      ? `${ROLE_ENV[this.role]}`
      : "this project's program";
    return `${given}: ${program.command}`;
  }

  async #portInUse(port: number, consequence: string): Promise<string> {
    let message = `port ${port} (${this.transport.toUpperCase()}) is already in use on ` +
      `127.0.0.1, so ${consequence}: the template has no {port}, so the program uses the ` +
      `fixed port ${port}. Stop whatever uses port ${port}, or put {port} in ` +
      `${ROLE_ENV[this.role]}.`;
    if (this.transport === "tcp" && await probeTcp(port, 500) === undefined) {
      message += `\nNothing accepts connections on it, so connections closed in the last ` +
        "minute probably hold it (TIME_WAIT, up to 60 s): wait a minute and grade again.";
    }
    return message;
  }
}

/**
 * Runs every selected role's checks, role after role.
 *
 * @example
 * ```ts
 * const results = await runRoles(loadConfig());
 * console.log(results.filter((r) => r.passed).length);
 * ```
 */
export async function runRoles(config: GradeConfig): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  for (const role of config.roles) {
    results.push(...await new RoleRunner({ role, config }).runAll());
  }
  return results;
}
