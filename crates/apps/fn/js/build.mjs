// Builds entry.js (which imports handler.js) into a wasi:http component
// with componentize-js, whose module path hearth passes in
// HEARTH_COMPONENTIZE_JS. Run by the daemon in a temporary directory.
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const { componentize } = await import(pathToFileURL(process.env.HEARTH_COMPONENTIZE_JS).href);
try {
  const { component } = await componentize({
    sourcePath: "entry.js",
    witPath: "wit",
    worldName: "handler",
  });
  await writeFile("handler.wasm", component);
} catch (error) {
  process.stderr.write(`${error?.message ?? error}\n`);
  process.exit(1);
}
