/**
 * Known reasons a submission cannot run at all, recognised in its output,
 * so that a failure names the real cause ("this is Python 2 code run by
 * python3") instead of only a byte diff.
 *
 * @module
 */

/** One known problem: what its output looks like, and what to say. */
interface KnownProblem {
  pattern: RegExp;
  advice: string;
}

const KNOWN_PROBLEMS: KnownProblem[] = [
  {
    pattern: /Missing parentheses in call to 'print'|name 'raw_input' is not defined/,
    advice: "This is Python 2 code run by python3 (a print statement, raw_input): grade it " +
      'with a python2 template (README, "Python 2"), or port it to Python 3.',
  },
  {
    pattern:
      /gaierror|Name or service not known|nodename nor servname|UnknownHostException|Temporary failure in name resolution|No address associated with hostname/,
    advice: "The program could not resolve a host name: it probably hard-codes its server " +
      "name (serverName = 'servername'). The kit cannot change that; see the README, " +
      '"Hard-coded server names", for the usual fix.',
  },
  {
    pattern: /Could not find or load main class|ClassNotFoundException|NoClassDefFoundError/,
    advice: "Java could not find the main class: compile first, and name the class with its " +
      "package and class path (javac -d build X.java && java -cp build pkg.X).",
  },
  {
    pattern:
      /\.java:\d+: error:|\.c:\d+:\d+: error:|SyntaxError: (?!Missing parentheses)|IndentationError: /,
    advice: "The program did not compile or parse (see its output above).",
  },
  {
    pattern: /command not found|\b(python[23]?|java|javac|gcc|cc|node|deno)\b[^\n]*: not found/,
    advice: "A command in the template was not found (python2, javac, gcc...): is it " +
      "installed and on PATH for the grading user?",
  },
  {
    pattern: /Permission denied|PermissionError|EACCES/,
    advice: "Permission denied: binding a port below 1024 needs root (README, " +
      '"Privileged ports"), or a file in the template is not executable.',
  },
];

/**
 * The advice for every known problem in a program's output, one line each.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const advice = knownProblems("  print 'hi'\nSyntaxError: Missing parentheses in call to 'print'");
 * assert.match(advice[0], /^This is Python 2 code run by python3/);
 * assert.deepEqual(knownProblems("all went well"), []);
 * ```
 */
export function knownProblems(output: string): string[] {
  return KNOWN_PROBLEMS.filter((problem) => problem.pattern.test(output))
    .map((problem) => problem.advice);
}
