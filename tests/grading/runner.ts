/**
 * Runs the grading checks for one role: starts the server under test (and
 * waits until it is ready) or runs the client under test, and turns each
 * check's outcome into a result with a readable explanation.
 *
 * A server is started for its first check and reused while it runs; when it
 * has exited, the next check starts it again, and the failures that follow
 * say so. A server whose template has `{port}` also starts afresh, on a new
 * free port, after a failed check (it may be stuck). A server without
 * `{port}` must use its fixed port, so it is kept after a failure: starting
 * it again at once could fail, because connections it closed keep the port
 * in TIME_WAIT and the textbook server does not set SO_REUSEADDR.
 *
 * A server is ready when the kernel's socket tables show that one of its
 * processes listens (TCP) or is bound (UDP) on the port: nothing is sent to
 * it before the first check (see sockets.ts). Where the tables cannot be
 * read, a connection or a probe datagram, or a printed line, stands in.
 *
 * @module
 */
import {
  fillTemplate,
  type GradeConfig,
  LOOPBACK,
  portVariable,
  type Role,
  ROLE_ENV,
  ROLE_LABEL,
  transportPortVariable,
  usesPortPlaceholder,
} from "./config.ts";
import {
  type Check,
  type CheckId,
  checksFor,
  type ClientContext,
  type ClientRun,
  type ClientRunOptions,
  type ServerContext,
} from "./checks.ts";
import { CheckFailure, outputHasReply } from "./compare.ts";
import { knownProblems } from "./diagnose.ts";
import { type Address, portBecomesFree, probeTcp, probeUdp } from "./net.ts";
import { type FixedPort, reserveFixedPort } from "./ports.ts";
import { ProgramProcess } from "./process.ts";
import {
  describeOwners,
  loopbackFor,
  portHolders,
  portSockets,
  programSockets,
  type SocketEntry,
} from "./sockets.ts";

/** The outcome of one check. */
export interface CheckResult {
  /** The role checked. */
  role: Role;
  /** The check. */
  id: CheckId;
  /** "TCP server: basic ASCII sentence". */
  name: string;
  /** Whether the check passed (false for a void grade too). */
  passed: boolean;
  /**
   * The grade cannot be trusted, whatever the submission does (its fixed
   * port is taken by another program): grade again once that is fixed.
   */
  void?: boolean;
  /** Why it passed, or why it failed (with a diff, the program's output and a hint). */
  output: string;
  /** Milliseconds the check took. */
  ms: number;
}

/**
 * Thrown when the submission cannot be graded fairly: the grade is void,
 * not failed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const grade = new VoidGrade("port 12000 (TCP) is taken by another program: nc -l 12000 (pid 7)");
 * assert.ok(grade instanceof Error);
 * assert.equal(grade.name, "VoidGrade");
 * ```
 */
export class VoidGrade extends Error {
  /** `message`: why the grade cannot be trusted. */
  constructor(message: string) {
    super(message);
    this.name = "VoidGrade";
  }
}

/** A server under test that is ready. */
interface RunningServer {
  program: ProgramProcess;
  address: Address;
  exited: AbortController;
  /** The port it was given, held until it stops (none on a fixed port). */
  reserved: FixedPort | undefined;
  /** Why this is not the first process of a fixed-port server, if it is not. */
  restarted?: string;
}

/** Options for {@linkcode RoleRunner}. */
export interface RoleRunnerOptions {
  /** The role to check. */
  role: Role;
  /** Templates, ports and deadlines. */
  config: GradeConfig;
}

/** How long a server may listen only on a port it was not given before that is its answer. */
const ELSEWHERE_MS = 500;

/**
 * Runs the checks of one role against the program its template names.
 *
 * @example
 * ```ts ignore
 * // ignore: it runs a program under test through every check (seconds);
 * // tests/conformance_test.ts and tests/grading_meta_test.ts do.
 * const runner = new RoleRunner({ role: "tcp_server", config: loadConfig() });
 * for (const check of runner.checks) console.log((await runner.run(check)).passed);
 * await runner.close();
 * ```
 */
export class RoleRunner implements AsyncDisposable {
  /** The role checked. */
  readonly role: Role;
  /** The command template of the program under test. */
  readonly template: string;
  /** The role's transport. */
  readonly transport: "tcp" | "udp";
  /** Whether one server process serves every check (its template has no {port}). */
  readonly shared: boolean;
  /** The port the program uses when its template has no {port}. */
  readonly fixedPort: number;
  /** The checks of this role, in order. */
  readonly checks: readonly Check[];
  #config: GradeConfig;
  #server: RunningServer | undefined;
  /** Why the server was not ready within the deadline, once: later checks fail at once. */
  #neverReady: string | undefined;
  /** The check running now, for notes about a server that exited during it. */
  #current: Check | undefined;
  /** How the previous process of a fixed-port server ended, and during which check. */
  #lastExit: string | undefined;
  /** Why the grade is void, once it is: later checks are not run. */
  #voided: string | undefined;

  /** Prepares the checks; starts nothing yet. */
  constructor(options: RoleRunnerOptions) {
    const { role, config } = options;
    this.role = role;
    this.#config = config;
    this.template = config.templates[role];
    this.transport = role.startsWith("tcp") ? "tcp" : "udp";
    this.shared = role.endsWith("server") && !usesPortPlaceholder(this.template);
    this.fixedPort = config.fixedPorts[role];
    this.checks = checksFor(role, { assignment: config.assignment, service: config.service });
  }

  /** The test name of a check: "TCP server: basic ASCII sentence". */
  nameOf(check: Check): string {
    return `${ROLE_LABEL[this.role]}: ${check.title}`;
  }

  /** Runs one check; never throws. */
  async run(check: Check): Promise<CheckResult> {
    const started = performance.now();
    this.#current = check;
    let passed = false;
    let voided = false;
    let output: string;
    try {
      if (this.#voided) throw new VoidGrade(`not run: ${this.#voided}`);
      output = check.side === "server"
        ? await this.#runServerCheck(check.run)
        : await this.#runClientCheck(check.run);
      passed = true;
    } catch (error) {
      if (error instanceof VoidGrade) {
        voided = true;
        this.#voided ??= error.message;
        output = `The grade is void: ${error.message}`;
      } else if (error instanceof CheckFailure) {
        output = `${error.message}\nHint: ${check.hint}`;
      } else {
        output = `the check itself failed: ${(error as Error)?.stack ?? String(error)}`;
      }
    }
    const ms = Math.round(performance.now() - started);
    const result: CheckResult = {
      role: this.role,
      id: check.id,
      name: this.nameOf(check),
      passed,
      output,
      ms,
    };
    if (voided) result.void = true;
    return result;
  }

  /**
   * Runs every check in order, then stops the server under test. After a
   * void result the remaining checks are not run.
   */
  async runAll(): Promise<CheckResult[]> {
    const results: CheckResult[] = [];
    try {
      for (const check of this.checks) {
        const result = await this.run(check);
        results.push(result);
        if (result.void) break;
      }
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

  /** Same as close(). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // --- servers ------------------------------------------------------------

  /**
   * Runs a server check. If the server exits with code 0 during the check
   * and the check fails, the check runs once more on a fresh process: a
   * server that stops after a passing check (one client, then exit) may
   * still look alive when the next check starts, and that check must not
   * fail for it. A crash (another exit) is the check's own finding.
   */
  async #runServerCheck(run: (context: ServerContext) => Promise<string>): Promise<string> {
    let firstTry: string | undefined;
    for (;;) {
      const server = await this.#acquireServer();
      try {
        const output = await this.#tryServerCheck(server, run);
        return firstTry ? `${output} (on a fresh process: ${firstTry})` : output;
      } catch (error) {
        if (!(error instanceof CheckFailure) || !server.program.exitedCleanly || firstTry) {
          if (firstTry && error instanceof CheckFailure) {
            throw new CheckFailure(`${error.message}\n(The same on a second try: ${firstTry}.)`);
          }
          throw error;
        }
        firstTry = `the first try failed, and the server ${server.program.describeExit()}`;
      }
    }
  }

  /** One try of a server check on `server`; a failure carries the server's state. */
  async #tryServerCheck(
    server: RunningServer,
    run: (context: ServerContext) => Promise<string>,
  ): Promise<string> {
    let failed = false;
    try {
      return await run({
        transport: this.transport,
        address: server.address,
        server: server.program,
        serverExited: server.exited.signal,
        // A reused server on a fixed port must not be left with TIME_WAIT on it.
        halfCloseDelayMs: this.shared ? 100 : 0,
        service: this.#config.service,
      });
    } catch (error) {
      if (!(error instanceof CheckFailure)) throw error;
      failed = true;
      // A crash is often the reason: give a dying server a moment to be reaped.
      await server.program.waitUntil(() => !server.program.running, 150);
      if (!server.program.running) await server.program.drain(500);
      throw new CheckFailure(`${error.message}\n${this.#serverState(server)}`);
    } finally {
      // A server that dies of the check's last connection (a write to a
      // reset connection, say) must be seen dead before the next check.
      await server.program.waitUntil(() => !server.program.running, 50);
      if (!server.program.running) {
        this.#lastExit = `${server.program.describeExit()} during the check "${this.#current?.id}"`;
      }
      // A server is reused while its checks pass. After a failure it may be
      // stuck, so a {port} server starts afresh on a new port; a fixed-port
      // one is kept (a restart could find its port in TIME_WAIT).
      if (!server.program.running || (failed && !this.shared)) await this.close();
    }
  }

  /** What the server under test is doing now, with its output, for a failure. */
  #serverState(server: RunningServer): string {
    const { program } = server;
    const state = program.running
      ? `The server under test (${this.#describeCommand(program)}) is still running.`
      : `The server under test (${this.#describeCommand(program)}) ` +
        `${program.describeExit()} during this check.`;
    const lines = [state];
    if (server.restarted) lines.push(server.restarted);
    lines.push(program.outputTail());
    lines.push(...knownProblems(program.stdoutText() + program.stderrText()));
    return lines.join("\n");
  }

  /** The running server, or a new one once it is ready. */
  async #acquireServer(): Promise<RunningServer> {
    if (this.#server?.program.running) return this.#server;
    await this.close();
    if (this.#neverReady) {
      throw new CheckFailure(
        `not run: the server under test was not ready in an earlier check: ${this.#neverReady}`,
      );
    }
    const reserved = this.shared ? undefined : await reserveFixedPort();
    const port = reserved?.port ?? this.fixedPort;
    if (this.shared) await this.#requireFreePort(port, "the server under test cannot bind it");
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
      if (this.#lastExit) {
        this.#server.restarted = `Note: this is a new process of the server under test: ` +
          `the previous one ${this.#lastExit}, and the kit started it again for this check.`;
        this.#lastExit = undefined;
      }
      return this.#server;
    } catch (error) {
      await program?.stop();
      reserved?.[Symbol.dispose]();
      throw error;
    }
  }

  /**
   * Resolves to the address of the server under test once one of its
   * processes listens (TCP) or is bound (UDP) on `port`.
   */
  async #waitReady(program: ProgramProcess, port: number): Promise<Address> {
    const ms = this.#config.readyDeadlineMs;
    const deadline = performance.now() + ms;
    const wanted = this.transport === "tcp" ? "listen" : "bound";
    let elsewhereSince: number | undefined;
    for (let poll = 0;; poll++) {
      if (!program.running) throw await this.#exitedBeforeReady(program, port);
      // Most looks find nothing yet: a look at the port alone is cheap, and
      // the program's own sockets are looked at when something is there, or
      // now and then, to see whether it listens on another port.
      const onPortNow = await portSockets(this.transport, port);
      if (onPortNow === undefined) return await this.#waitReadyByProbe(program, port, deadline);
      const now = performance.now();
      const somethingThere = onPortNow.some((s) => s.state === wanted);
      if (!somethingThere && poll % 8 !== 7 && now < deadline) {
        await program.waitUntil(() => !program.running, 25);
        continue;
      }
      const sockets = await programSockets(program.pid) ?? [];
      const mine = sockets.filter((s) => s.transport === this.transport && s.state === wanted);
      const onPort = mine.filter((s) => s.port === port);
      if (onPort.length > 0) return { hostname: this.#reachable(onPort, program), port };
      if (mine.length > 0) {
        elsewhereSince ??= now;
        if (now - elsewhereSince >= ELSEWHERE_MS) {
          throw this.#notReady(program, this.#listensElsewhere(mine, port));
        }
      }
      if (now >= deadline) {
        const verb = this.transport === "tcp" ? "listened" : "was bound";
        throw this.#notReady(
          program,
          `within ${ms / 1000} s no process of it ${verb} on ` +
            `${this.transport.toUpperCase()} port ${port}` +
            (sockets.length > 0 ? ` (its sockets: ${describeSockets(sockets)})` : ""),
        );
      }
      await program.waitUntil(() => !program.running, 25);
    }
  }

  /** The loopback address that reaches one of `sockets`; fails if none is loopback. */
  #reachable(sockets: SocketEntry[], program: ProgramProcess): string {
    const hostnames = sockets.map((s) => loopbackFor(s.address)).filter((h) => h !== undefined);
    const hostname = hostnames.find((h) => !h.includes(":")) ?? hostnames[0];
    if (hostname !== undefined) return hostname;
    throw this.#notReady(
      program,
      `it listens on ${describeSockets(sockets)} only, which is not a loopback address, and ` +
        "the kit talks to 127.0.0.1 and ::1 only: bind '' (every interface), 0.0.0.0 or " +
        "localhost instead of a fixed address",
    );
  }

  /** "listens on TCP port 12001 (0.0.0.0), not on port 34567: ..." */
  #listensElsewhere(sockets: SocketEntry[], port: number): string {
    const other = sockets[0].port;
    const where = `it ${this.transport === "tcp" ? "listens" : "is bound"} on ` +
      `${describeSockets(sockets)}, not on port ${port}`;
    if (!this.shared) {
      return `${where}, the port it was given as {port}: the program ignores the port on ` +
        "its command line. Read it from the command line (sys.argv, args[0]), or, if it " +
        `hard-codes ${other}, remove {port} from ${ROLE_ENV[this.role]} and set ` +
        `${portVariable(this.role)}=${other}`;
    }
    return `${where}, the fixed port the kit was told: it hard-codes port ${other}. Set ` +
      `${portVariable(this.role)}=${other} (or ${transportPortVariable(this.role)}=${other}) ` +
      "and grade again";
  }

  /** Records why the server was never ready (later checks fail at once), as a failure. */
  #notReady(program: ProgramProcess, why: string): CheckFailure {
    this.#neverReady = why;
    return new CheckFailure(
      `the server under test (${this.#describeCommand(program)}) was not ready: ${why}\n` +
        [program.outputTail(), ...knownProblems(program.stderrText())].join("\n"),
    );
  }

  /** The failure (or void grade) for a server that exited before it was ready. */
  async #exitedBeforeReady(program: ProgramProcess, port: number): Promise<Error> {
    await program.drain(500);
    const output = program.stdoutText() + program.stderrText();
    if (/in use|EADDRINUSE|BindException/i.test(output)) {
      const taken = await this.#portTaken(port);
      if (taken) return new VoidGrade(`${taken}, so the server under test could not bind it`);
    }
    return new CheckFailure(
      `the server under test (${this.#describeCommand(program)}) ` +
        `${program.describeExit()} before it was ready\n` +
        [program.outputTail(), ...knownProblems(output)].join("\n"),
    );
  }

  /** Ready by talking to it: where the socket tables cannot be read. */
  async #waitReadyByProbe(
    program: ProgramProcess,
    port: number,
    deadline: number,
  ): Promise<Address> {
    const printedLine = () => program.stdoutBytes().includes(0x0a);
    while (performance.now() < deadline) {
      if (!program.running) throw await this.#exitedBeforeReady(program, port);
      const hostname = this.transport === "tcp"
        ? await probeTcp(port, 500)
        : await probeUdp(port, 40);
      if (hostname) return { hostname, port };
      if (printedLine()) return { hostname: LOOPBACK, port };
      await program.waitUntil(() => printedLine() || !program.running, 25);
    }
    throw this.#notReady(
      program,
      `within ${this.#config.readyDeadlineMs / 1000} s it neither ${
        this.transport === "tcp" ? "accepted a connection" : "answered a probe datagram"
      } on port ${port} of 127.0.0.1 or ::1 nor printed a line`,
    );
  }

  // --- clients ------------------------------------------------------------

  async #runClientCheck(run: (context: ClientContext) => Promise<string>): Promise<string> {
    const listenPort = usesPortPlaceholder(this.template) ? 0 : this.fixedPort;
    if (listenPort !== 0) {
      await this.#requireFreePort(listenPort, "the kit cannot serve the client on it");
    }
    const runs: ClientRun[] = [];
    const context: ClientContext = {
      transport: this.transport,
      listenPort,
      deadlineMs: this.#config.clientDeadlineMs,
      service: this.#config.service,
      runClient: async (options) => {
        const run = await this.#runClient(options);
        runs.push(run);
        return run;
      },
    };
    try {
      return await run(context);
    } catch (error) {
      // Show the run that missed its reply (a check may run the client twice).
      const shown = runs.find((run) => !run.found) ?? runs.at(-1);
      if (!(error instanceof CheckFailure) || shown === undefined) throw error;
      const { program } = shown;
      throw new CheckFailure(
        [
          error.message,
          `The client under test: ${this.#describeCommand(program)}`,
          program.outputTail(),
          ...knownProblems(program.stdoutText() + program.stderrText()),
        ].join("\n"),
      );
    }
  }

  /**
   * Runs the client and waits for the reply, its exit, or its deadline. The
   * client's clock starts at its first contact with the kit (`contacts()`
   * turns positive: a connection or a datagram arrived), so that its
   * start-up (a JVM, an interpreter on a loaded grading machine) is not
   * counted against its timeout; before that it gets the longer of the
   * ready and the client deadlines to make contact.
   */
  async #runClient(options: ClientRunOptions): Promise<ClientRun> {
    const { port, input, expect, contacts } = options;
    const { clientDeadlineMs, readyDeadlineMs } = this.#config;
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
        outputHasReply(program.stdoutBytes().subarray(0, 256 * 1024), expect, this.#config.service);
      const done = () => found() || !program.running;
      let contactAt: number | undefined;
      for (;;) {
        const now = performance.now();
        if (contactAt === undefined && contacts() > 0) contactAt = now;
        const end = contactAt === undefined
          ? started + Math.max(clientDeadlineMs, readyDeadlineMs)
          : contactAt + clientDeadlineMs;
        if (done() || now >= end) break;
        // Before the first contact, look for it every 20 ms.
        await program.waitUntil(
          done,
          contactAt === undefined ? Math.min(20, end - now) : end - now,
        );
      }
      const ms = Math.round(performance.now() - started);
      const exitedOnItsOwn = !program.running;
      if (exitedOnItsOwn) await program.drain(500); // the last of its output
      const contactMs = contactAt === undefined ? undefined : Math.round(contactAt - started);
      return { found: found(), exitedOnItsOwn, ms, contactMs, program, port };
    } finally {
      await program.stop();
    }
  }

  // --- ports and messages ---------------------------------------------------

  #describeCommand(program: ProgramProcess): string {
    const given = this.#config.submitted.includes(this.role)
      ? `${ROLE_ENV[this.role]}`
      : "this project's program";
    return `${given}: ${program.command}`;
  }

  /**
   * Throws a {@linkcode VoidGrade} if another program holds the fixed port
   * `port`: then the submission cannot be graded, and failing every check
   * would blame the student.
   */
  async #requireFreePort(port: number, consequence: string): Promise<void> {
    if (await portBecomesFree(this.transport, port)) return;
    const taken = await this.#portTaken(port) ??
      `port ${port} (${this.transport.toUpperCase()}) is already in use on 127.0.0.1 ` +
        "by a program the kit could not identify";
    throw new VoidGrade(
      `${taken}, so ${consequence}. The template of ${ROLE_ENV[this.role]} has no {port}, so ` +
        `the program uses the fixed port ${port}. Stop that program and grade again, or put ` +
        `{port} in ${ROLE_ENV[this.role]}.`,
    );
  }

  /**
   * Who holds `port` ("port 12000 (TCP) is taken by another program: nc -l
   * 12000 (pid 7)", or its TIME_WAIT connections), or undefined if nobody.
   */
  async #portTaken(port: number): Promise<string | undefined> {
    const name = `port ${port} (${this.transport.toUpperCase()})`;
    const holders = await portHolders(this.transport, port);
    if (holders === undefined) return undefined;
    if (holders.owners.length > 0) {
      return `${name} is taken by another program: ${describeOwners(holders.owners)}`;
    }
    const waiting = holders.entries.filter((entry) => entry.state === "time_wait").length;
    if (waiting > 0) {
      return `${name} still has ${waiting} connection(s) in TIME_WAIT, left by a server that ` +
        "closed its connections first (they expire within a minute; while they last, the port " +
        "cannot be bound again if that server did not set SO_REUSEADDR, like the textbook's): " +
        "wait a minute";
    }
    return undefined;
  }
}

/** "12001 (0.0.0.0), 12001 (::)", for messages. */
function describeSockets(sockets: SocketEntry[]): string {
  const seen = new Set<string>();
  for (const s of sockets) {
    seen.add(
      `${s.transport.toUpperCase()} ${s.port} (${s.address}${
        s.state === "listen" || s.state === "bound" ? "" : `, ${s.state}`
      })`,
    );
  }
  return [...seen].join(", ");
}

/**
 * Runs every selected role's checks, role after role. A void result ends
 * the run: the grade as a whole is void.
 *
 * @example
 * ```ts ignore
 * // ignore: it grades all four roles (about a minute); deno task grade does.
 * const results = await runRoles(loadConfig());
 * console.log(results.filter((r) => r.passed).length);
 * ```
 */
export async function runRoles(config: GradeConfig): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  for (const role of config.roles) {
    results.push(...await new RoleRunner({ role, config }).runAll());
    if (results.some((result) => result.void)) break;
  }
  return results;
}
