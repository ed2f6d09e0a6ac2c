/**
 * The README's line-by-line tables quote the first part of each program:
 * this fails when a quoted line is no longer there, or has moved out of the
 * textbook part, so the tables cannot go stale. (The commands the documents
 * show are run by the docs check, `deno task docs`.)
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT } from "./helpers.ts";

/** The programs' first part: from the "Part 1" banner to the "Part 2" one. */
async function partOne(program: string): Promise<string> {
  const text = await Deno.readTextFile(join(ROOT, program));
  const start = text.indexOf("// Part 1:");
  const end = text.indexOf("// Part 2:");
  assert.ok(start > 0 && end > start, `${program} has no Part 1 and Part 2 banners`);
  return text.slice(start, end);
}

/** The code spans of a Markdown table row's cell (`x`, or ``x`y`` with backticks inside). */
function codeSpans(cell: string): string[] {
  return [...cell.matchAll(/(`+)\s?(.+?)\s?\1/g)].map((match) => match[2]);
}

/** The README's rows for one program: [Python cell, Deno cell]. */
async function tableRows(program: string): Promise<[string, string][]> {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const heading = readme.indexOf(`→ ${program}\n`);
  assert.ok(heading > 0, `README.md has no table for ${program}`);
  const table = readme.slice(heading).split("\n\n")[1];
  return table.split("\n").slice(2).map((row) => {
    // "| python | deno |": the cells are separated by " | " (no quoted line holds one).
    const [python, deno] = row.replace(/^\|\s*/, "").replace(/\s*\|$/, "").split(" | ");
    return [python.trim(), deno.trim()];
  });
}

for (const program of ["udp_client.ts", "udp_server.ts", "tcp_client.ts", "tcp_server.ts"]) {
  Deno.test(`README: the ${program} table quotes the program's textbook part`, async () => {
    const code = await partOne(program);
    const rows = await tableRows(program);
    assert.ok(rows.length >= 7, `only ${rows.length} rows found for ${program}`);
    let quoted = 0;
    for (const [python, deno] of rows) {
      // The first span of the Deno cell is the program's own line; later
      // spans are flags and names. Rows that say "(the same call...)" quote nothing.
      const [line] = codeSpans(deno);
      if (line === undefined || deno.startsWith("(") || deno.startsWith("nothing")) continue;
      assert.ok(
        code.includes(line),
        `README.md quotes \`${line}\` for ${python}, but Part 1 of ${program} has no such line`,
      );
      quoted++;
    }
    assert.ok(quoted >= 6, `only ${quoted} lines quoted for ${program}`);
  });
}

Deno.test("docs/concurrency.md: the lines it quotes are in tcp_server.ts", async () => {
  const code = await Deno.readTextFile(join(ROOT, "tcp_server.ts"));
  const doc = await Deno.readTextFile(join(ROOT, "docs", "concurrency.md"));
  const start = doc.indexOf("### 6. Async functions");
  assert.ok(start > 0, "docs/concurrency.md has no section on async functions");
  const section = doc.slice(start, doc.indexOf("\n## ", start));
  // Each bullet opens with a line of the program in a code span.
  const quoted = section.split("\n- ").slice(1).map((bullet) => codeSpans(bullet)[0]);
  assert.ok(quoted.length >= 4, `only ${quoted.length} lines quoted`);
  for (const line of quoted) {
    assert.ok(code.includes(line), `docs/concurrency.md quotes \`${line}\`, not in tcp_server.ts`);
  }
});
