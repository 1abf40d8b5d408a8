// Builds entry.js (which imports handler.js) into a wasi:http component
// with componentize-js, whose module path hearth passes in
// HEARTH_COMPONENTIZE_JS. Run by the daemon in a temporary directory.
//
// componentize() splices the world's bindings into the StarlingMonkey
// engine on every build, though the result depends only on the engine, the
// features, the WIT files and the world, never on the handler. So this
// runs componentize-js 0.19's
// steps itself (splice, wizer, check_init, stubWasi, componentNew and
// metadataAdd, in its order and with its messages) and keeps the spliced
// engine in HEARTH_FN_SPLICED, a directory that daemons sharing the tools
// share too. Another version of componentize-js goes through componentize()
// unchanged, since its steps may differ. The cache saves about 1 s of CPU
// a build, not the 2 s the splice takes: the splicer's first call pays for
// growing its memory (see source.rs on the garbage collector), and with
// the splice cached that call is stubWasi's.
//
// `node build.mjs --splice-only` fills the cache and builds nothing
// (scripts/setup.sh warms it so, for the first deploy's sake).
//
// HEARTH_FN_TIMINGS=1 prints each step's time to stderr (for profiling by
// hand; the daemon never sets it).
import { createHash, randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

// The componentize-js whose steps this follows.
const STEPS_OF = "0.19.3";
// The world hearth builds against, and componentize-js's default features.
const WIT = "wit";
const WORLD = "handler";
const FEATURES = ["stdio", "random", "clocks", "http", "fetch-event"];

const started = performance.now();
let last = started;
const timed = (step) => {
  if (process.env.HEARTH_FN_TIMINGS) {
    const now = performance.now();
    process.stderr.write(`${step}: ${(now - last).toFixed(0)} ms\n`);
    last = now;
  }
};

const componentizeJs = process.env.HEARTH_COMPONENTIZE_JS;
const packageJson = JSON.parse(await readFile(join(dirname(componentizeJs), "../package.json"), "utf8"));
try {
  const splicedDir = process.env.HEARTH_FN_SPLICED;
  if (process.argv.includes("--splice-only")) {
    if (packageJson.version === STEPS_OF && splicedDir) {
      await splice(componentizeJs, packageJson.version, splicedDir);
    }
    process.exit(0);
  }
  const component =
    packageJson.version === STEPS_OF
      ? await build(componentizeJs, packageJson.version, splicedDir)
      : await viaComponentize(componentizeJs);
  await writeFile("handler.wasm", component);
  timed("write");
  if (process.env.HEARTH_FN_TIMINGS) {
    process.stderr.write(`total: ${(performance.now() - started).toFixed(0)} ms\n`);
  }
} catch (error) {
  process.stderr.write(`${error?.message ?? error}\n`);
  process.exit(1);
}

async function viaComponentize(module) {
  const { componentize } = await import(pathToFileURL(module).href);
  const { component } = await componentize({ sourcePath: "entry.js", witPath: WIT, worldName: WORLD });
  return component;
}

// componentize-js 0.19.3's componentize({ sourcePath: "entry.js",
// witPath, worldName }), with the splice cached.
async function build(module, version, splicedDir) {
  const require = createRequire(module);
  const load = (name) => import(pathToFileURL(require.resolve(name)).href);
  const [{ splicer }, jco, wizerModule, oxc] = await Promise.all([
    import(pathToFileURL(join(dirname(module), "../lib/spidermonkey-embedding-splicer.js")).href),
    load("@bytecodealliance/jco"),
    load("@bytecodealliance/wizer"),
    load("oxc-parser"),
  ]);
  timed("load");

  // componentize() parses the entry as "source.js" and drops fetch-event
  // when it exports incomingHandler; hearth's entry.js never does, but the
  // check stays so that the features are the ones componentize() would use.
  const features = new Set(FEATURES);
  const source = await readFile("entry.js", "utf8");
  const parsed = await oxc.parseAsync("source.js", source);
  if (parsed.errors.length > 0) {
    throw new Error(`failed to parse JS source, encountered [${parsed.errors.length}] errors`);
  }
  const names = parsed.module.staticExports.flatMap((e) => e.entries.map((entry) => entry.exportName.name));
  if (names.includes("incomingHandler")) {
    features.delete("fetch-event");
  }
  timed("parse");

  const engine = await readFile(join(dirname(module), "../lib/starlingmonkey_embedding.wasm"));
  const { wasm, jsBindings, exports, imports } = await spliced(splicer, engine, [...features], version, splicedDir);

  // As componentize() lays its work directory out: in the temporary
  // directory (TMPDIR is the build directory), its sources beside it.
  const workDir = join(tmpdir(), createHash("sha256").update(randomBytes(16)).digest("hex").slice(0, 12));
  const sourcesDir = join(workDir, "sources");
  await mkdir(sourcesDir, { recursive: true });
  const input = join(workDir, "in.wasm");
  const output = join(workDir, "out.wasm");
  const initializer = join(sourcesDir, "initializer.js");
  await Promise.all([writeFile(input, wasm), writeFile(initializer, jsBindings)]);

  const env = {
    DEBUG: "",
    SOURCE_NAME: "source.js",
    EXPORT_CNT: exports.length.toString(),
    FEATURE_CLOCKS: features.has("clocks") ? "1" : "",
  };
  for (const [index, [name, exported]] of exports.entries()) {
    env[`EXPORT${index}_NAME`] = name;
    env[`EXPORT${index}_ARGS`] = (exported.paramptr ? "*" : "") + exported.params.join(",");
    env[`EXPORT${index}_RET`] = (exported.retptr ? "*" : "") + (exported.ret || "");
    env[`EXPORT${index}_RETSIZE`] = String(exported.retsize);
  }
  for (const [index, imported] of imports.entries()) {
    env[`IMPORT${index}_NAME`] = imported[1];
    env[`IMPORT${index}_ARGCNT`] = String(imported[2]);
  }
  env.IMPORT_CNT = imports.length;
  timed("prepare");

  const wizened = spawnSync(
    wizerModule.default,
    [
      "--allow-wasi",
      "--init-func",
      "componentize.wizer",
      `--dir=${sourcesDir}`,
      `--mapdir=/::${process.cwd()}`,
      "--wasm-bulk-memory=true",
      "--inherit-env=true",
      `-o=${output}`,
      input,
    ],
    {
      stdio: [null, process.stdout, "pipe"],
      env,
      input: `--initializer-script-path ${initializer} --strip-path-prefix ${process.cwd()}/ entry.js`,
      encoding: "utf-8",
    },
  );
  if (wizened.status !== 0) {
    await rm(workDir, { recursive: true });
    throw new Error(`Failed to initialize component:\n${wizerError(wizened.stderr)}`);
  }
  const bin = await readFile(output);
  await rm(workDir, { recursive: true });
  timed("wizer");

  await checkInit(bin, initializer);
  timed("check_init");

  const stubbed = splicer.stubWasi(bin, [...features], undefined, resolve(WIT), WORLD);
  timed("stubWasi");

  const adapter = await readFile(jco.preview1AdapterReactorPath());
  const component = await jco.metadataAdd(
    await jco.componentNew(stubbed, Object.entries({ wasi_snapshot_preview1: adapter }), false),
    Object.entries({
      language: [["JavaScript", ""]],
      "processed-by": [["ComponentizeJS", version]],
    }),
  );
  timed("componentNew");
  return component;
}

// Splices with the default features, as a build of hearth's entry.js
// does, into the cache if it is not there yet.
async function splice(module, version, splicedDir) {
  const { splicer } = await import(pathToFileURL(join(dirname(module), "../lib/spidermonkey-embedding-splicer.js")).href);
  const engine = await readFile(join(dirname(module), "../lib/starlingmonkey_embedding.wasm"));
  await spliced(splicer, engine, FEATURES, version, splicedDir);
}

// The engine with the world's bindings spliced in, from the cache when it
// is there and whole, else spliced now and cached for the next build.
async function spliced(splicer, engine, features, version, dir) {
  const key = await spliceKey(engine, features, version);
  const path = dir ? join(dir, `${key}.spliced`) : null;
  if (path) {
    const cached = await readSpliced(path, key);
    timed("splice (cached)");
    if (cached) {
      await removeAbandoned(dir).catch(() => {});
      return cached;
    }
  }
  const { wasm, jsBindings, exports, imports } = splicer.spliceBindings(engine, features, undefined, resolve(WIT), WORLD, false);
  timed("splice");
  const result = { wasm: Buffer.from(wasm), jsBindings, exports, imports };
  if (path) {
    // A cache that cannot be written (a read-only tools directory, a full
    // disk) costs the next build its splice, nothing more.
    await writeSpliced(dir, path, key, result).catch(() => {});
    timed("splice (cache write)");
  }
  return result;
}

// What the splice depends on: componentize-js's version, the engine, the
// features, every WIT file (path and text) and the world.
async function spliceKey(engine, features, version) {
  const hash = createHash("sha256");
  const field = (value) => {
    const bytes = typeof value === "string" ? Buffer.from(value) : value;
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(bytes.length));
    hash.update(length).update(bytes);
  };
  field("hearth-spliced-1");
  field(version);
  field(engine);
  field(features.join(","));
  field(WORLD);
  for (const file of await witFiles(WIT)) {
    field(file);
    field(await readFile(file));
  }
  return hash.digest("hex");
}

async function witFiles(dir) {
  const entries = await readdir(dir, { withFileTypes: true });
  const files = [];
  for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      files.push(...(await witFiles(path)));
    } else if (entry.isFile()) {
      files.push(path);
    }
  }
  return files;
}

// A cache entry is one file: a line of JSON (the key, the bindings, the
// exports and imports, the spliced engine's length and SHA-256), then the
// spliced engine.

async function readSpliced(path, key) {
  let bytes;
  try {
    bytes = await readFile(path);
  } catch {
    return null;
  }
  try {
    const newline = bytes.indexOf(10);
    const header = JSON.parse(bytes.subarray(0, newline).toString("utf8"));
    const wasm = bytes.subarray(newline + 1);
    const whole =
      header.key === key &&
      wasm.length === header.length &&
      createHash("sha256").update(wasm).digest("hex") === header.sha256 &&
      typeof header.jsBindings === "string" &&
      Array.isArray(header.exports) &&
      Array.isArray(header.imports);
    return whole ? { wasm, jsBindings: header.jsBindings, exports: header.exports, imports: header.imports } : null;
  } catch {
    return null;
  }
}

// Writes the entry under a name of its own, syncs it, then renames it into
// place, so that a reader sees a whole entry or none, whichever of several
// daemons writes it.
async function writeSpliced(dir, path, key, { wasm, jsBindings, exports, imports }) {
  await mkdir(dir, { recursive: true });
  await removeAbandoned(dir);
  const header = JSON.stringify({
    key,
    length: wasm.length,
    sha256: createHash("sha256").update(wasm).digest("hex"),
    jsBindings,
    exports,
    imports,
  });
  const temporary = join(dir, `.${key}.${process.pid}.${randomBytes(8).toString("hex")}`);
  try {
    const file = await open(temporary, "wx", 0o644);
    try {
      await file.writeFile(Buffer.concat([Buffer.from(`${header}\n`), wasm]));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  const directory = await open(dir, "r");
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

// Deletes what builds stopped mid-write (at their time limit) left: temporary
// entries older than any build may run.
async function removeAbandoned(dir) {
  const cutoff = Date.now() - 10 * 60 * 1000;
  for (const name of await readdir(dir)) {
    if (name.startsWith(".")) {
      const path = join(dir, name);
      const info = await stat(path).catch(() => null);
      if (info && info.mtimeMs < cutoff) {
        await rm(path, { force: true });
      }
    }
  }
}

// componentize-js's parseWizerStderr: wizer's trap banner and exit status
// cut out, the engine's own words kept.
function wizerError(stderr) {
  const output = `${stderr}`;
  const causeStart = output.indexOf("Error: the `componentize.wizer` function trapped\n\nCaused by:");
  const exitCodeStart = output.indexOf("Exited with i32 exit status");
  if (causeStart === -1 || exitCodeStart === -1) {
    return output;
  }
  const causeEnd = output.indexOf("\n", exitCodeStart + 1);
  return `${output.substring(0, causeStart)}${output.substring(causeEnd)}`.trim();
}

// componentize-js's initWasm and handleCheckInitOutput: runs the wizened
// engine's check_init with every import mocked, and says what it reports.
async function checkInit(bin, initializer) {
  let stderr = "";
  const module = await WebAssembly.compile(bin);
  let memory;
  const mocks = {
    wasi_snapshot_preview1: {
      fd_write(fd, iovs, count, written) {
        if (fd !== 2) return 0;
        const view = new DataView(memory.buffer);
        let total = 0;
        for (let i = 0; i < count; i++) {
          const pointer = view.getUint32(iovs + i * 8, true);
          const length = view.getUint32(iovs + 4 + i * 8, true);
          stderr += new TextDecoder().decode(new Uint8Array(memory.buffer, pointer, length));
          total += length;
        }
        view.setUint32(written, total, true);
        return 1;
      },
    },
  };
  for (const { module: from, name } of WebAssembly.Module.imports(module)) {
    mocks[from] ??= {};
    mocks[from][name] ??= () => {
      throw new Error(`Internal error: unexpected call to "${name}" during Wasm verification`);
    };
  }
  const { exports } = await WebAssembly.instantiate(module, mocks);
  memory = exports.memory;
  const status = exports.check_init();
  const errors = {
    1: "Unable to extract expected exports list",
    2: "Unable to parse the core ABI export types",
  };
  if (status === 0) {
    return;
  }
  let message = errors[status] ?? `Unknown error during initialization: ${status}`;
  if (stderr) {
    const prefix = new RegExp(`${initializer}[:\\d]* ?`);
    message += `\n${stderr
      .split("\n")
      .map((line) => line.replace(prefix, ""))
      .join("\n")
      .trim()}`;
  }
  throw new Error(message);
}

