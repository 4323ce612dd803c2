// serverless.yml's package.artifact, resolved when osls packages or deploys: the path of the zip
// `make package` built, and only if `python -m infra.package --check` finds it current (sources,
// tested versions, target) and intact (every file's sha256 as its manifest and its wheel's RECORD
// say). A missing, stale or damaged zip stops packaging with what to run, so no command (make
// deploy, or osls called by hand) can ship code the tests did not run.
// https://github.com/oss-serverless/serverless/blob/main/docs/guides/variables.md (file(...).js exports)
const { execFileSync } = require("node:child_process");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..");
const DEFAULT_ARTEFACT = "dist/drugsync-lambda.zip";

module.exports.artifact = () => {
  const artefact = process.env.DRUGSYNC_ARTEFACT || DEFAULT_ARTEFACT;
  const python = process.env.DRUGSYNC_PYTHON || path.join(ROOT, ".venv", "bin", "python");
  try {
    execFileSync(python, ["-m", "infra.package", "--check", "--out", artefact], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (error) {
    const said = `${error.stderr || ""}${error.stdout || ""}`.trim() || error.message;
    // A string, not an Error: osls then prints the message alone, without a stack trace.
    throw `the Lambda artefact cannot be deployed: ${said}`;
  }
  return artefact;
};
