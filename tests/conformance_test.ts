/**
 * The grading suite: every check against every selected role, one named
 * test per check. By default it tests this project's four programs; the
 * environment variables UDP_SERVER, UDP_CLIENT, TCP_SERVER and TCP_CLIENT
 * switch a role to another program (a command template with {host} and
 * {port}), and GRADE_ROLES limits the roles tested. See "Grading student
 * submissions" in the README.
 *
 * ```sh
 * TCP_SERVER='python3 submissions/alice/TCPServer.py {port}' GRADE_ROLES=tcp_server \
 *   deno test --allow-net --allow-run --allow-read --allow-env tests/conformance_test.ts
 * ```
 */
import { ConfigError, type GradeConfig, loadConfig, ROLE_LABEL } from "./grading/config.ts";
import { RoleRunner } from "./grading/runner.ts";

/** A failed check, shown without a stack trace: the message says it all. */
class CheckFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckFailed";
    this.stack = `${this.name}: ${message}`;
  }
}

let config: GradeConfig | undefined;
try {
  config = loadConfig();
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  const message = error.message;
  Deno.test("grading configuration", () => {
    throw new CheckFailed(message);
  });
}

for (const role of config?.roles ?? []) {
  const runner = new RoleRunner({ role, config: config! });
  // A server under test is reused from one check to the next: it lives
  // until the "stop" test below, so its checks cannot sanitize resources.
  const server = role.endsWith("server");
  for (const check of runner.checks) {
    Deno.test({
      name: runner.nameOf(check),
      sanitizeOps: !server,
      sanitizeResources: !server,
      fn: async () => {
        const result = await runner.run(check);
        if (!result.passed) throw new CheckFailed(result.output);
      },
    });
  }
  if (server) {
    Deno.test({
      name: `${ROLE_LABEL[role]}: stop the server under test`,
      sanitizeOps: false,
      sanitizeResources: false,
      fn: () => runner.close(),
    });
  }
}
