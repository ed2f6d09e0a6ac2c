/**
 * The assignment file (JSON): what a class is graded on, where the kit's
 * guesses are not enough. Every field is optional.
 *
 * ```json
 * {
 *   "name": "Lab 2: socket programming",
 *   "service": "upper",
 *   "roles": ["tcp_server", "tcp_client"],
 *   "checks": { "tcp_server": ["basic", "long1k", "concurrent"] },
 *   "points": { "default": 1, "tcp_server": 2, "tcp_server.concurrent": 4 },
 *   "programs": {
 *     "tcp_server": { "files": ["server*.py"], "port": 6789 },
 *     "tcp_client": { "command": "python3 {file} localhost" }
 *   },
 *   "readyDeadline": 5,
 *   "clientDeadline": 10
 * }
 * ```
 *
 * @module
 */
import { type CheckId, checksFor } from "../checks.ts";
import { type Role, ROLES } from "../config.ts";
import { type Service, SERVICES } from "../compare.ts";

/** How one role's program is found, built and run, where the defaults are not right. */
export interface ProgramOverride {
  /**
   * File name patterns, case-insensitive, `*` for any characters
   * ("server*.py"): the first file that matches is the role's program.
   */
  files?: string[];
  /**
   * A build command run in the student's temporary copy (`sh -c`), with
   * `{file}` (the program's path in the copy) and `{build}` (an empty folder
   * for the output); replaces the kit's build.
   */
  build?: string;
  /**
   * The command that runs it, in the temporary copy: `{file}`, `{build}`,
   * `{class}` (a Java class with its package), and the kit's `{host}` and
   * `{port}` (without `{port}` the program uses its fixed port).
   */
  command?: string;
  /** The port the program uses when `command` has no `{port}`; default read from the source, else 12000. */
  port?: number;
}

/** An assignment, with every default filled in. */
export interface Assignment {
  /** Shown in feedback; the column name of the Canvas export. */
  name: string;
  /**
   * The service the programs implement: `upper`, the textbook's uppercase
   * app (the default), or `count-s`, its suggested modification (the
   * number of times the letter s, or S, appears). It chooses the expected
   * replies and the hints, as `GRADE_SERVICE` does for `deno task grade`.
   */
  service: Service;
  /** The roles graded, in order. */
  roles: Role[];
  /** The checks graded, per role. */
  checks: Record<Role, CheckId[]>;
  /** Points for each check, "tcp_server.basic" -> 1. */
  points: Record<string, number>;
  /** What the assignment file says of each role's program (file, commands, port). */
  programs: Partial<Record<Role, ProgramOverride>>;
  /** How long a server gets to become ready. */
  readyDeadlineMs: number;
  /** How long a client gets, from its first request, to print the reply or to give up. */
  clientDeadlineMs: number;
}

/**
 * A mistake in the assignment file: said in one line.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const error = new AssignmentError('assignment.json: "roles" names an unknown role "web"');
 * assert.equal(error.name, "AssignmentError");
 * ```
 */
export class AssignmentError extends Error {
  /** Makes the error, with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "AssignmentError";
  }
}

/**
 * The assignment without a file: all four roles, every check, one point each.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(defaultAssignment().roles.length, 4);
 * ```
 */
export function defaultAssignment(): Assignment {
  return parseAssignment({}, "(default)");
}

/**
 * Reads and checks an assignment file.
 *
 * @example
 * ```ts ignore
 * // ignore: reads an instructor's file (parseAssignment's example runs)
 * const assignment = await readAssignment("assignment.json");
 * ```
 */
export async function readAssignment(path: string): Promise<Assignment> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new AssignmentError(
      `Cannot read the assignment file ${path}: ${(error as Error).message}`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new AssignmentError(`${path} is not valid JSON: ${(error as Error).message}`);
  }
  return parseAssignment(json, path);
}

/**
 * Checks an assignment given as JSON; `where` names it in errors.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const a = parseAssignment({ roles: ["tcp_server"], points: { "tcp_server.basic": 3 } }, "a.json");
 * assert.deepEqual(a.points["tcp_server.basic"], 3);
 * assert.deepEqual(a.points["tcp_server.utf8"], 1);
 * assert.equal(a.service, "upper");
 * assert.equal(parseAssignment({ service: "count-s" }, "b.json").service, "count-s");
 * ```
 */
export function parseAssignment(json: unknown, where: string): Assignment {
  const fail = (message: string): never => {
    throw new AssignmentError(`${where}: ${message}`);
  };
  if (!isObject(json)) fail("must be a JSON object");
  const given = json as Record<string, unknown>;
  const known = [
    "name",
    "service",
    "roles",
    "checks",
    "points",
    "programs",
    "readyDeadline",
    "clientDeadline",
  ];
  for (const key of Object.keys(given)) {
    if (!known.includes(key)) fail(`unknown field "${key}" (known: ${known.join(", ")})`);
  }

  const name = given.name ?? "Socket programming";
  if (typeof name !== "string" || !name.trim()) fail(`"name" must be a non-empty string`);

  const service = SERVICES.find((s) => s === (given.service ?? "upper")) ??
    fail(`"service" must be ${SERVICES.map((s) => JSON.stringify(s)).join(" or ")}`);

  const roleOf = (word: unknown, field: string): Role => {
    const role = ROLES.find((r) => r === word);
    return role ??
      fail(`"${field}" names an unknown role ${JSON.stringify(word)} (use ${ROLES.join(", ")})`);
  };
  let roles = [...ROLES];
  if (given.roles !== undefined) {
    if (!Array.isArray(given.roles) || given.roles.length === 0) {
      fail(`"roles" must be a non-empty list of roles`);
    }
    const wanted = new Set((given.roles as unknown[]).map((r) => roleOf(r, "roles")));
    roles = ROLES.filter((role) => wanted.has(role));
  }

  const checks = {} as Record<Role, CheckId[]>;
  for (const role of ROLES) checks[role] = checksFor(role).map((check) => check.id);
  if (given.checks !== undefined) {
    if (!isObject(given.checks)) fail(`"checks" must map roles to lists of check ids`);
    for (const [key, list] of Object.entries(given.checks as Record<string, unknown>)) {
      const role = roleOf(key, "checks");
      const ids = checks[role];
      if (!Array.isArray(list) || list.length === 0) {
        fail(`"checks.${role}" must be a non-empty list of check ids`);
      }
      for (const id of list as unknown[]) {
        if (!ids.includes(id as CheckId)) {
          fail(
            `"checks.${role}" names ${JSON.stringify(id)}, not a check of ${role} (its checks: ${
              ids.join(", ")
            })`,
          );
        }
      }
      checks[role] = ids.filter((id) => (list as unknown[]).includes(id));
    }
  }

  const pointsGiven = given.points ?? {};
  if (!isObject(pointsGiven)) fail(`"points" must map "default", roles or "role.check" to numbers`);
  const pointsOf = (key: string): number | undefined => {
    const value = (pointsGiven as Record<string, unknown>)[key];
    if (value === undefined) return undefined;
    if (typeof value !== "number" || !(value >= 0) || !Number.isFinite(value)) {
      fail(`"points.${key}" must be a number of 0 or more`);
    }
    return value as number;
  };
  for (const key of Object.keys(pointsGiven as object)) {
    const [role, id, ...rest] = key.split(".");
    const valid = key === "default" ||
      (ROLES.includes(role as Role) && rest.length === 0 &&
        (id === undefined || checks[role as Role].includes(id as CheckId) ||
          checksFor(role as Role).some((c) => c.id === id)));
    if (!valid) fail(`"points" has an unknown key "${key}" (use default, a role, or role.check)`);
  }
  const points: Record<string, number> = {};
  const fallback = pointsOf("default") ?? 1;
  for (const role of ROLES) {
    const perRole = pointsOf(role) ?? fallback;
    for (const id of checks[role]) points[`${role}.${id}`] = pointsOf(`${role}.${id}`) ?? perRole;
  }

  const programs: Partial<Record<Role, ProgramOverride>> = {};
  if (given.programs !== undefined) {
    if (!isObject(given.programs)) fail(`"programs" must map roles to objects`);
    for (const [key, value] of Object.entries(given.programs as Record<string, unknown>)) {
      const role = roleOf(key, "programs");
      if (!isObject(value)) fail(`"programs.${role}" must be an object`);
      programs[role] = parseOverride(value as Record<string, unknown>, `programs.${role}`, fail);
    }
  }

  const seconds = (key: string, fallbackSeconds: number): number => {
    const value = given[key] ?? fallbackSeconds;
    if (typeof value !== "number" || !(value >= 0.1 && value <= 600)) {
      fail(`"${key}" must be a number of seconds from 0.1 to 600`);
    }
    return (value as number) * 1000;
  };
  return {
    name: (name as string).trim(),
    service,
    roles,
    checks,
    points,
    programs,
    readyDeadlineMs: seconds("readyDeadline", 5),
    clientDeadlineMs: seconds("clientDeadline", 10),
  };
}

function parseOverride(
  value: Record<string, unknown>,
  field: string,
  fail: (message: string) => never,
): ProgramOverride {
  const override: ProgramOverride = {};
  for (const key of Object.keys(value)) {
    if (!["files", "build", "command", "port"].includes(key)) {
      fail(`"${field}" has an unknown field "${key}" (known: files, build, command, port)`);
    }
  }
  if (value.files !== undefined) {
    const files = value.files;
    if (!Array.isArray(files) || files.some((f) => typeof f !== "string" || !f)) {
      fail(`"${field}.files" must be a list of file name patterns`);
    }
    override.files = files as string[];
  }
  for (const key of ["build", "command"] as const) {
    if (value[key] === undefined) continue;
    if (typeof value[key] !== "string" || !(value[key] as string).trim()) {
      fail(`"${field}.${key}" must be a command line`);
    }
    override[key] = value[key] as string;
  }
  if (value.port !== undefined) {
    const port = value.port;
    if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
      fail(`"${field}.port" must be a whole number from 1 to 65535`);
    }
    override.port = port as number;
  }
  return override;
}

function isObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Whether a file name matches a pattern of the assignment file:
 * case-insensitive, `*` for any characters, `?` for one; a pattern without
 * `/` matches the file's base name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert(matchesPattern("src/Server_TCP.py", "server*.py"));
 * ```
 */
export function matchesPattern(name: string, pattern: string): boolean {
  const subject = pattern.includes("/") ? name : name.split("/").at(-1)!;
  const regex = new RegExp(
    "^" +
      pattern.split("").map((c) =>
        c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")
      ).join("") + "$",
    "i",
  );
  return regex.test(subject);
}
