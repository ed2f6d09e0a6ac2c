/**
 * One student's checks, run in a process of its own: inside the student's
 * network namespace when the machine allows it, so that the kit and the
 * student's programs share one loopback (and one port 12000), and the
 * kit's look at /proc/net sees the student's sockets only.
 *
 * `deno run ... child.ts JOB.json RESULTS.json`: JOB.json says which
 * programs to run and which checks; RESULTS.json gets the check results.
 * It reuses the kit's {@linkcode RoleRunner}: the same checks, readiness and
 * messages as `deno task grade`.
 *
 * @module
 */
import type { CheckId } from "../checks.ts";
import type { Service } from "../compare.ts";
import { defaultTemplate, type GradeConfig, type Role, ROLES } from "../config.ts";
import { type CheckResult, RoleRunner } from "../runner.ts";

/** What the batch asks of one student's child. */
export interface ChildJob {
  /** The student's temporary copy: the programs run there. */
  cwd: string;
  /** Each role to grade: its command template, its port and its checks. */
  roles: { role: Role; template: string; port: number; checks: CheckId[] }[];
  /** How long a server gets to become ready. */
  readyDeadlineMs: number;
  /** How long a client gets to print the reply, or to give up. */
  clientDeadlineMs: number;
  /** The assignment's service; default `upper`. */
  service?: Service;
}

/** What the child writes back. */
export interface ChildOutput {
  /** Every check's result, in order. */
  results: CheckResult[];
  /** How long the student took. */
  seconds: number;
}

/**
 * Runs a job's checks: the UDP roles and the TCP roles side by side, each
 * role after role; a void result ends the run.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const out = await runJob({ cwd: ".", roles: [], readyDeadlineMs: 5000, clientDeadlineMs: 10000 });
 * assert.equal(out.results.length, 0); // no roles, no checks
 * ```
 */
export async function runJob(job: ChildJob): Promise<ChildOutput> {
  const started = performance.now();
  const templates = {} as Record<Role, string>;
  const fixedPorts = {} as Record<Role, number>;
  for (const role of ROLES) {
    const given = job.roles.find((r) => r.role === role);
    templates[role] = given?.template ?? defaultTemplate(role, { service: job.service });
    fixedPorts[role] = given?.port ?? 12000;
  }
  const config: GradeConfig = {
    roles: job.roles.map((r) => r.role),
    templates,
    submitted: job.roles.map((r) => r.role),
    fixedPorts,
    readyDeadlineMs: job.readyDeadlineMs,
    clientDeadlineMs: job.clientDeadlineMs,
    cwd: job.cwd,
    assignment: "uppercase", // class grading grades the uppercase app (either service), for now
    service: job.service ?? "upper",
  };
  // The TCP roles and the UDP roles run side by side: they use different
  // ports (TCP 12000 is not UDP 12000), and most of a student's time is
  // spent waiting on deadlines (a client that never gives up), so a
  // student takes as long as the slower transport, not both.
  const results: CheckResult[] = [];
  let voided = false;
  const chain = async (transport: "tcp" | "udp") => {
    for (const { role, checks } of job.roles.filter((r) => r.role.startsWith(transport))) {
      if (voided) return;
      const runner = new RoleRunner({ role, config });
      try {
        for (const check of runner.checks.filter((c) => checks.includes(c.id))) {
          if (voided) break;
          const result = await runner.run(check);
          results.push(result);
          voided ||= result.void === true;
        }
      } finally {
        await runner.close();
      }
    }
  };
  await Promise.all([chain("udp"), chain("tcp")]);
  // In the job's order: role by role, check by check.
  const order = (r: CheckResult) =>
    job.roles.findIndex((j) => j.role === r.role) * 100 +
    job.roles.find((j) => j.role === r.role)!.checks.indexOf(r.id);
  results.sort((a, b) => order(a) - order(b));
  return { results, seconds: (performance.now() - started) / 1000 };
}

if (import.meta.main) {
  const [jobPath, outPath] = Deno.args;
  // Stopped by the batch (a student over the time limit): kill the
  // programs' process groups on the way out (process.ts does on unload).
  Deno.addSignalListener("SIGTERM", () => Deno.exit(124));
  const job = JSON.parse(await Deno.readTextFile(jobPath)) as ChildJob;
  const output = await runJob(job);
  await Deno.writeTextFile(outPath, JSON.stringify(output));
}
