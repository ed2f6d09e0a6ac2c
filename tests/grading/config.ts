/**
 * What the grading suite tests, read from the environment.
 *
 * Each of the four roles runs a command template: this project's own program
 * by default, or the program given in `UDP_SERVER`, `UDP_CLIENT`,
 * `TCP_SERVER` or `TCP_CLIENT`. `{host}` and `{port}` are filled in by the
 * harness; a template without `{port}` uses its role's fixed port (12000, as
 * in the textbook, unless `TCP_SERVER_PORT`, `GRADE_TCP_PORT`... say
 * otherwise) on localhost.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { shellQuote } from "./process.ts";
import { type Service, SERVICES } from "./compare.ts";

/** The project folder (where deno.json lives). */
export const PROJECT_ROOT: string = fileURLToPath(new URL("../..", import.meta.url));

/** The four programs of the textbook's uppercase app. */
export type Role = "udp_server" | "udp_client" | "tcp_server" | "tcp_client";

/** Every role, in the order the suite tests them. */
export const ROLES: readonly Role[] = ["udp_server", "udp_client", "tcp_server", "tcp_client"];

/** The environment variable that selects each role's program. */
export const ROLE_ENV: Readonly<Record<Role, string>> = {
  udp_server: "UDP_SERVER",
  udp_client: "UDP_CLIENT",
  tcp_server: "TCP_SERVER",
  tcp_client: "TCP_CLIENT",
};

/** How each role is named in test names and grades. */
export const ROLE_LABEL: Readonly<Record<Role, string>> = {
  udp_server: "UDP server",
  udp_client: "UDP client",
  tcp_server: "TCP server",
  tcp_client: "TCP client",
};

/**
 * What the programs under test were asked to do (`GRADE_ASSIGNMENT`): the
 * textbook's uppercase app (the default), or seed 001's TCP session task
 * ("session": many messages per connection, "Your data was N bytes", Exit),
 * which has TCP roles only.
 */
export type Assignment = "uppercase" | "session";

/** Every assignment, the default first. */
export const ASSIGNMENTS: readonly Assignment[] = ["uppercase", "session"];

/** The address a server under test binds, and the one a client under test is given. */
export const LOOPBACK = "127.0.0.1";

/** Everything the harness needs to know, from the environment. */
export interface GradeConfig {
  /** The roles to test, in order. */
  roles: Role[];
  /** The command template of each role. */
  templates: Record<Role, string>;
  /** Which roles run a program given in the environment (the others run this project's). */
  submitted: Role[];
  /**
   * The port each role's program uses when its template has no `{port}`:
   * `TCP_SERVER_PORT` (and so on for each role), else `GRADE_TCP_PORT` or
   * `GRADE_UDP_PORT`, else `GRADE_FIXED_PORT`, else 12000.
   */
  fixedPorts: Record<Role, number>;
  /** Milliseconds a server gets to become ready (`GRADE_READY_DEADLINE` seconds, default 5). */
  readyDeadlineMs: number;
  /**
   * Milliseconds a client gets to print the reply or to give up when none
   * comes (`GRADE_CLIENT_DEADLINE` seconds, default 10: real clients often
   * wait 5 s before they give up), counted from its first request (a
   * connection or a datagram reaching the kit): its start-up is not. It
   * gets the longer of this and `readyDeadlineMs` to send that request. A
   * client that prints the reply is not waited for.
   */
  clientDeadlineMs: number;
  /** The assignment graded (`GRADE_ASSIGNMENT`, default "uppercase"). */
  assignment: Assignment;
  /** Folder the templates run in: where the command was started (`INIT_CWD` under deno task). */
  cwd: string;
  /**
   * The assignment's service (`GRADE_SERVICE`): `upper`, the textbook's
   * uppercase app (the default), or `count-s`, its suggested modification.
   * It chooses the expected replies, and this project's programs run with
   * `--service` set to it.
   */
  service: Service;
}

/**
 * A mistake in the grading environment variables.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const error = new ConfigError('GRADE_FIXED_PORT must be a number from 1 to 65535, not "x"');
 * assert.ok(error instanceof Error);
 * assert.equal(error.name, "ConfigError");
 * ```
 */
export class ConfigError extends Error {
  /** `message`: what is wrong, and how to fix it. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** What {@linkcode defaultTemplate} runs this project's program for. */
export interface TemplateOptions {
  /** The assignment: "uppercase" (the default) or "session" (`--session`). */
  assignment?: Assignment;
  /** The uppercase app's service: "upper" (the default) or "count-s" (`--service count-s`). */
  service?: Service;
}

/**
 * The command template that runs this project's own program for `role`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.match(defaultTemplate("tcp_client"), /tcp_client\.ts --host \{host\} --port \{port\} --timeout 2$/);
 * assert.match(defaultTemplate("udp_server", { service: "count-s" }), / --quiet --service count-s$/);
 * ```
 */
export function defaultTemplate(role: Role, options: TemplateOptions = {}): string {
  const { assignment = "uppercase", service = "upper" } = options;
  const extra: Record<Role, string> = {
    udp_server: "--quiet",
    tcp_server: "--quiet",
    // Short timeouts keep the "never replies" and "lossy" checks quick. A TCP
    // exchange includes the split check's byte-by-byte reply: 2 s leave room
    // for it on a loaded machine.
    udp_client: "--timeout 0.3 --tries 5",
    tcp_client: "--timeout 2",
  };
  const script = shellQuote(`${PROJECT_ROOT}${role}.ts`);
  const session = assignment === "session" ? " --session" : "";
  return `${shellQuote(Deno.execPath())} run --no-prompt --allow-net ${script} ` +
    `--host {host} --port {port} ${extra[role]}${session}` +
    (service === "upper" ? "" : ` --service ${service}`);
}

/**
 * Whether a template lets the harness choose the port.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(usesPortPlaceholder("python3 TCPServer.py {port}"), true);
 * assert.equal(usesPortPlaceholder("python3 TCPServer.py"), false); // port 12000
 * ```
 */
export function usesPortPlaceholder(template: string): boolean {
  return template.includes("{port}");
}

/**
 * Fills `{host}` and `{port}` into a template.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   fillTemplate("python3 s.py {host} {port}", { host: "127.0.0.1", port: 5000 }),
 *   "python3 s.py 127.0.0.1 5000",
 * );
 * ```
 */
export function fillTemplate(template: string, values: { host: string; port: number }): string {
  return template.replaceAll("{host}", shellQuote(values.host))
    .replaceAll("{port}", String(values.port));
}

/** Options for {@linkcode loadConfig}. */
export interface LoadConfigOptions {
  /** The environment; default the process's. */
  env?: Record<string, string | undefined>;
  /**
   * Without `GRADE_ROLES`: test only the roles given in the environment
   * (all four when none is), as `deno task grade` does, so a grade counts
   * only the submission. Default false: all four roles, as `deno test` does.
   */
  onlySubmitted?: boolean;
}

/**
 * Stops at once when Deno's UDP API is off. The kit needs it (UDP checks,
 * port reservations); this project's deno.json turns it on, so it is off
 * when the kit runs from another folder without `--config`.
 */
function requireUdpApi() {
  if (typeof (Deno as { listenDatagram?: unknown }).listenDatagram === "function") return;
  throw new ConfigError(
    "The grading kit needs Deno's UDP API, which is still unstable: run it from the project " +
      "folder (its deno.json turns the API on), or add --config PATH/TO/PROJECT/deno.json (or " +
      "--unstable-net) to the deno command",
  );
}

/**
 * Reads the grading configuration from the environment.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const config = loadConfig({ env: { TCP_SERVER: "python3 TCPServer.py {port}" } });
 * assert.equal(config.templates.tcp_server, "python3 TCPServer.py {port}");
 * assert.deepEqual(config.submitted, ["tcp_server"]);
 * ```
 */
export function loadConfig(options: LoadConfigOptions = {}): GradeConfig {
  const { env = Deno.env.toObject(), onlySubmitted = false } = options;
  requireUdpApi();
  const assignment = readAssignment(env);
  const service = readService(env);
  if (assignment === "session" && service !== "upper") {
    throw new ConfigError(
      "GRADE_SERVICE chooses the uppercase app's service: unset it for GRADE_ASSIGNMENT=session",
    );
  }
  const templates = {} as Record<Role, string>;
  const submitted: Role[] = [];
  for (const role of ROLES) {
    const given = env[ROLE_ENV[role]]?.trim();
    if (given) submitted.push(role);
    templates[role] = given || defaultTemplate(role, { assignment, service });
  }
  let roles = onlySubmitted && submitted.length > 0 ? submitted : [...ROLES];
  const only = env.GRADE_ROLES?.trim();
  if (only) roles = parseRoles(only);
  if (assignment === "session") roles = sessionRoles(roles, Boolean(only));
  return {
    roles,
    templates,
    submitted,
    fixedPorts: readFixedPorts(env),
    readyDeadlineMs: 1000 *
      readNumber(env, "GRADE_READY_DEADLINE", { fallback: 5, min: 0.1, max: 600 }),
    clientDeadlineMs: 1000 *
      readNumber(env, "GRADE_CLIENT_DEADLINE", { fallback: 10, min: 0.1, max: 600 }),
    cwd: env.INIT_CWD || Deno.cwd(),
    assignment,
    service,
  };
}

/** `GRADE_ASSIGNMENT`: "uppercase" (the default) or "session". */
function readAssignment(env: Record<string, string | undefined>): Assignment {
  const text = env.GRADE_ASSIGNMENT?.trim().toLowerCase() || "uppercase";
  const assignment = ASSIGNMENTS.find((a) => a === text);
  if (assignment) return assignment;
  throw new ConfigError(
    `GRADE_ASSIGNMENT must be one of ${ASSIGNMENTS.join(", ")}, not "${env.GRADE_ASSIGNMENT}"`,
  );
}

/** `GRADE_SERVICE`: `upper` (also when unset) or `count-s`. */
function readService(env: Record<string, string | undefined>): Service {
  const text = env.GRADE_SERVICE?.trim().toLowerCase();
  if (!text) return "upper";
  const service = SERVICES.find((name) => name === text);
  if (service === undefined) {
    throw new ConfigError(
      `GRADE_SERVICE must be ${SERVICES.join(" or ")}, not "${env.GRADE_SERVICE?.trim()}"`,
    );
  }
  return service;
}

/** The session task is TCP only: its roles are the TCP ones; naming a UDP role is a mistake. */
function sessionRoles(roles: Role[], named: boolean): Role[] {
  const udp = roles.filter((role) => role.startsWith("udp"));
  if (named && udp.length > 0) {
    throw new ConfigError(
      `GRADE_ASSIGNMENT=session has TCP roles only: remove ${udp.join(", ")} from GRADE_ROLES`,
    );
  }
  return roles.filter((role) => role.startsWith("tcp"));
}

/** The variable that sets one role's fixed port: `TCP_SERVER_PORT`, ... */
export function portVariable(role: Role): string {
  return `${ROLE_ENV[role]}_PORT`;
}

/** The variable that sets the fixed port of one transport: `GRADE_TCP_PORT` or `GRADE_UDP_PORT`. */
export function transportPortVariable(role: Role): string {
  return `GRADE_${role.startsWith("tcp") ? "TCP" : "UDP"}_PORT`;
}

/**
 * Every environment variable the grading kit reads. The kit's own tests
 * remove them from the environment of the programs they start, so that an
 * instructor's `TCP_SERVER=...` does not leak into a test of the kit.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.ok(GRADING_VARIABLES.includes("TCP_SERVER"));
 * ```
 */
export const GRADING_VARIABLES: readonly string[] = [
  ...ROLES.map((role) => ROLE_ENV[role]),
  ...ROLES.map(portVariable),
  "GRADE_TCP_PORT",
  "GRADE_UDP_PORT",
  "GRADE_FIXED_PORT",
  "GRADE_ROLES",
  "GRADE_ASSIGNMENT",
  "GRADE_READY_DEADLINE",
  "GRADE_CLIENT_DEADLINE",
  "GRADE_RESULTS",
  "GRADE_SERVICE",
];

function readFixedPorts(env: Record<string, string | undefined>): Record<Role, number> {
  const range = { min: 1, max: 65535, whole: true };
  const common = readNumber(env, "GRADE_FIXED_PORT", { fallback: 12000, ...range });
  const ports = {} as Record<Role, number>;
  for (const role of ROLES) {
    const transport = readNumber(env, transportPortVariable(role), { fallback: common, ...range });
    ports[role] = readNumber(env, portVariable(role), { fallback: transport, ...range });
  }
  return ports;
}

/** `tcp_server,UDP_CLIENT` -> the roles, in the suite's order. */
function parseRoles(text: string): Role[] {
  const wanted = new Set<Role>();
  for (const word of text.split(/[\s,]+/).filter(Boolean)) {
    const name = word.toLowerCase().replace("-", "_");
    const role = ROLES.find((r) => r === name);
    if (role === undefined) {
      throw new ConfigError(
        `GRADE_ROLES names an unknown role "${word}": use ${ROLES.join(", ")}`,
      );
    }
    wanted.add(role);
  }
  return ROLES.filter((role) => wanted.has(role));
}

function readNumber(
  env: Record<string, string | undefined>,
  name: string,
  { fallback, min, max, whole = false }: {
    fallback: number;
    min: number;
    max: number;
    whole?: boolean;
  },
): number {
  const text = env[name]?.trim();
  if (!text) return fallback;
  const value = Number(text);
  const pattern = whole ? /^\d+$/ : /^\d+(\.\d+)?$/;
  if (!pattern.test(text) || value < min || value > max) {
    const kind = whole ? "a whole number" : "a number";
    throw new ConfigError(`${name} must be ${kind} from ${min} to ${max}, not "${text}"`);
  }
  return value;
}
