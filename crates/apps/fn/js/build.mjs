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
// the splice cached that call is stubWasi's (where the template below does
// not serve, since with it the splicer is not loaded at all).
//
// The steps after Wizer (stubWasi, componentNew, metadataAdd) take most of
// what is left, about 1.4 s of CPU, and they too depend on the handler only
// through what Wizer snapshots: the memory's size, the globals and the data
// segments. Everything else in the wizened module is the engine's, the same
// for every handler. So the first build keeps its wizened module's outline
// and its component as a template (beside the spliced engine, `.template`),
// and a later build whose wizened module has the same outline takes the
// template and puts its own memory, globals and data into the template's
// core module: the component the three steps would have made, byte for
// byte (`hearth-apps`' test `a_templated_javascript_build_is_the_full_build`
// compares them). A wizened module with another outline goes the long way.
//
// `node build.mjs --warm` (scripts/setup.sh, for the first deploy's sake)
// fills both caches: it builds entry.js as it finds it beside this file.
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
// What Wizer writes of the handler's state, by section id: the memory (its
// size), the globals, the data count and the data. stubWasi and
// componentNew pass these sections through as they are, and look only at
// the others.
const SNAPSHOT = new Set([5, 6, 11, 12]);
// What a template's header says of its own layout; another value (a
// template written by another hearth) is not used.
const TEMPLATE_FORMAT = "hearth-template-1";

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
  if (process.argv.includes("--warm") && (packageJson.version !== STEPS_OF || !splicedDir)) {
    process.exit(0);
  }
  const component =
    packageJson.version === STEPS_OF
      ? await build(componentizeJs, packageJson.version, splicedDir, process.env.HEARTH_FN_TEMPLATE_CHECK === "1")
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
// witPath, worldName }), with the splice cached and the steps after Wizer
// taken from the template. With `check` (HEARTH_FN_TEMPLATE_CHECK=1, for
// tests), it takes the long way too and fails unless both made the same.
async function build(module, version, splicedDir, check) {
  const require = createRequire(module);
  const load = (name) => import(pathToFileURL(require.resolve(name)).href);
  // The splicer and jco are loaded only when they are needed: a cached
  // splice with a template needs neither.
  let splicerModule;
  const splicer = async () => {
    splicerModule ??= (
      await import(pathToFileURL(join(dirname(module), "../lib/spidermonkey-embedding-splicer.js")).href)
    ).splicer;
    return splicerModule;
  };
  const [wizerModule, oxc] = await Promise.all([load("@bytecodealliance/wizer"), load("oxc-parser")]);
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
  const { key, wasm, jsBindings, exports, imports } = await spliced(splicer, engine, [...features], version, splicedDir);

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

  const templatePath = splicedDir ? join(splicedDir, `${key}.template`) : null;
  let templated = null;
  if (templatePath) {
    const template = await readEntry(templatePath, key);
    templated = template && fromTemplate(template, bin);
    timed("template");
    if (templated && !check) {
      return templated;
    }
  }

  const stubbed = (await splicer()).stubWasi(bin, [...features], undefined, resolve(WIT), WORLD);
  timed("stubWasi");

  const jco = await load("@bytecodealliance/jco");
  const adapter = await readFile(jco.preview1AdapterReactorPath());
  const component = await jco.metadataAdd(
    await jco.componentNew(stubbed, Object.entries({ wasi_snapshot_preview1: adapter }), false),
    Object.entries({
      language: [["JavaScript", ""]],
      "processed-by": [["ComponentizeJS", version]],
    }),
  );
  timed("componentNew");
  if (check) {
    if (!templated) {
      throw new Error("template check: no template to build from (run the build once without the check)");
    }
    if (!templated.equals(component)) {
      throw new Error("template check: the component made from the template differs from the full build's");
    }
  } else if (templatePath) {
    const template = toTemplate(bin, component);
    if (template) {
      await writeEntry(splicedDir, templatePath, { key, ...template.header }, template.component).catch(() => {});
      timed("template (cache write)");
    }
  }
  return component;
}

// A WebAssembly binary's sections: id, where the section begins (its id's
// byte), and where its payload starts and ends. `start` skips the preamble.
function sections(bytes, start = 8, end = bytes.length) {
  const found = [];
  let at = start;
  while (at < end) {
    const id = bytes[at];
    const [size, payload] = leb(bytes, at + 1);
    if (payload + size > end) {
      throw new Error("a section runs past the end of its module");
    }
    found.push({ id, header: at, start: payload, end: payload + size });
    at = payload + size;
  }
  return found;
}

function leb(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    if (byte === undefined || shift > 28) {
      throw new Error("a malformed section size");
    }
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) {
      return [value, at];
    }
  }
}

function encodeLeb(value) {
  const out = [];
  do {
    let byte = value & 0x7f;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return Buffer.from(out);
}

function section(id, payload) {
  return Buffer.concat([Buffer.from([id]), encodeLeb(payload.length), payload]);
}

// The engine's share of a wizened module: every section but the
// snapshot's, in order, the snapshot's by their ids alone.
function outline(module) {
  const hash = createHash("sha256").update(module.subarray(0, 8));
  for (const { id, start, end } of sections(module)) {
    const length = Buffer.alloc(8);
    if (SNAPSHOT.has(id)) {
      hash.update(Buffer.from([id]));
    } else {
      length.writeBigUInt64LE(BigInt(end - start));
      hash.update(Buffer.from([id])).update(length).update(module.subarray(start, end));
    }
  }
  return hash.digest("hex");
}

// A template from a full build, or null where the component does not hold
// the wizened module's snapshot sections verbatim in one core module (a
// componentize-js that rewrote them): then every build goes the long way.
function toTemplate(wizened, built) {
  const component = Buffer.from(built.buffer, built.byteOffset, built.byteLength);
  const snapshot = sections(wizened).filter(({ id }) => SNAPSHOT.has(id));
  const bytes = (s, from) => from.subarray(s.start, s.end);
  const nested = sections(component).findIndex(({ id, start, end }) => {
    if (id !== 1) return false;
    const kept = sections(component, start + 8, end).filter((s) => SNAPSHOT.has(s.id));
    return (
      kept.length === snapshot.length &&
      kept.every((s, i) => s.id === snapshot[i].id && bytes(s, component).equals(bytes(snapshot[i], wizened)))
    );
  });
  if (nested === -1) {
    return null;
  }
  return { header: { format: TEMPLATE_FORMAT, outline: outline(wizened), module: nested }, component };
}

// The component for a wizened module from the template: the template's,
// with the snapshot sections of its core module replaced by the module's
// own, every other section copied as it is. Null where the module's outline
// is not the template's, or the template is not what this file writes.
function fromTemplate({ header, wasm: component }, wizened) {
  try {
    if (header.format !== TEMPLATE_FORMAT || typeof header.outline !== "string" || outline(wizened) !== header.outline) {
      return null;
    }
    const all = sections(component);
    const nested = all[header.module];
    if (!Number.isInteger(header.module) || nested?.id !== 1) {
      return null;
    }
    const own = sections(wizened).filter(({ id }) => SNAPSHOT.has(id));
    const module = [component.subarray(nested.start, nested.start + 8)];
    let next = 0;
    for (const s of sections(component, nested.start + 8, nested.end)) {
      if (!SNAPSHOT.has(s.id)) {
        module.push(component.subarray(s.header, s.end));
        continue;
      }
      const from = own[next++];
      if (from?.id !== s.id) {
        return null;
      }
      module.push(section(s.id, wizened.subarray(from.start, from.end)));
    }
    if (next !== own.length) {
      return null;
    }
    return Buffer.concat([
      component.subarray(0, nested.header),
      section(1, Buffer.concat(module)),
      component.subarray(nested.end),
    ]);
  } catch {
    // A template this file cannot read: the build goes the long way, and
    // writes a good one.
    return null;
  }
}

// The engine with the world's bindings spliced in, from the cache when it
// is there and whole, else spliced now and cached for the next build. Its
// `key` names the template too.
async function spliced(splicer, engine, features, version, dir) {
  const key = await spliceKey(engine, features, version);
  const path = dir ? join(dir, `${key}.spliced`) : null;
  if (path) {
    const cached = await readEntry(path, key);
    timed("splice (cached)");
    const { header } = cached ?? {};
    if (
      cached &&
      typeof header.jsBindings === "string" &&
      Array.isArray(header.exports) &&
      Array.isArray(header.imports)
    ) {
      await removeAbandoned(dir).catch(() => {});
      return { key, wasm: cached.wasm, jsBindings: header.jsBindings, exports: header.exports, imports: header.imports };
    }
  }
  const { wasm, jsBindings, exports, imports } = (await splicer()).spliceBindings(
    engine,
    features,
    undefined,
    resolve(WIT),
    WORLD,
    false,
  );
  timed("splice");
  const result = { key, wasm: Buffer.from(wasm), jsBindings, exports, imports };
  if (path) {
    // A cache that cannot be written (a read-only tools directory, a full
    // disk) costs the next build its splice, nothing more.
    await writeEntry(dir, path, { key, jsBindings, exports, imports }, result.wasm).catch(() => {});
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

// A cache entry is one file: a line of JSON, then a WebAssembly binary. The
// JSON holds the key, the binary's length and SHA-256, and what else the
// entry keeps: for the spliced engine its bindings, exports and imports;
// for a template, the outline of the wizened module it was made from and
// the index of the section holding the core module.

async function readEntry(path, key) {
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
      createHash("sha256").update(wasm).digest("hex") === header.sha256;
    return whole ? { header, wasm } : null;
  } catch {
    return null;
  }
}

// Writes the entry under a name of its own, syncs it, then renames it into
// place, so that a reader sees a whole entry or none, whichever of several
// daemons writes it.
async function writeEntry(dir, path, fields, wasm) {
  await mkdir(dir, { recursive: true });
  await removeAbandoned(dir);
  const header = JSON.stringify({
    ...fields,
    length: wasm.length,
    sha256: createHash("sha256").update(wasm).digest("hex"),
  });
  const temporary = join(dir, `.${fields.key}.${process.pid}.${randomBytes(8).toString("hex")}`);
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

