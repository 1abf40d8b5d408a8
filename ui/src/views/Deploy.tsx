// Deploying an app from the browser: a `.wasm` dropped on the form or
// chosen, and optionally its `hearth.toml`, sent as `hearth app deploy`
// sends them: `PUT /v1/apps/{name}` with the component in base64.

import { useState } from 'preact/hooks';
import { ApiError, api, asApiError, base64Of, seg, type DeployResult } from '../api';
import { ErrorNote, bytes } from './common';

/** What every WebAssembly module and component starts with: `\0asm`. */
const WASM_MAGIC = [0x00, 0x61, 0x73, 0x6d];
/** The daemon's limit on a component (before base64). */
const MAX_COMPONENT = 64 << 20;

function invalid(message: string, hint: string): ApiError {
  return new ApiError(0, 'invalid', message, hint);
}

async function checkComponent(file: File): Promise<void> {
  if (file.size > MAX_COMPONENT) {
    throw invalid(
      `${file.name} is ${bytes(file.size)}, over the daemon's 64 MiB limit.`,
      'Build in release mode and strip debug info.',
    );
  }
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  if (!WASM_MAGIC.every((byte, i) => head[i] === byte)) {
    throw invalid(
      `${file.name} is not WebAssembly.`,
      'Choose the .wasm that `cargo build --target wasm32-wasip2` wrote under target/wasm32-wasip2/release/.',
    );
  }
}

/** Takes one file from a drop, or from the input it was chosen in. */
function FileField({
  label,
  accept,
  file,
  onFile,
  name,
}: {
  label: string;
  accept: string;
  file: File | null;
  onFile: (file: File | null) => void;
  name: string;
}) {
  const [over, setOver] = useState(false);
  return (
    <div
      class={`drop${over ? ' drop-over' : ''}`}
      onDragOver={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        setOver(false);
        const dropped = e.dataTransfer?.files?.[0];
        if (dropped) onFile(dropped);
      }}
    >
      <label>
        {label}
        <input
          type="file"
          name={name}
          accept={accept}
          onChange={(e) => onFile((e.target as HTMLInputElement).files?.[0] ?? null)}
        />
      </label>
      <p class="drop-hint">{file ? `${file.name}, ${bytes(file.size)}` : 'Drop a file here, or choose one.'}</p>
    </div>
  );
}

/** Deploys a new app (with a name field) or a new version of `app`. */
export function DeployForm({ app, onDeployed }: { app?: string; onDeployed?: (result: DeployResult) => void }) {
  const [name, setName] = useState(app ?? '');
  const [component, setComponent] = useState<File | null>(null);
  const [manifest, setManifest] = useState<File | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [done, setDone] = useState<DeployResult | null>(null);

  const deploy = async (event: Event) => {
    event.preventDefault();
    setError(null);
    setDone(null);
    const target = (app ?? name).trim();
    try {
      // The daemon checks the name itself, and says what a name may be.
      if (!target) throw invalid('The app needs a name.', 'It is also its address: NAME.localhost.');
      if (!component) throw invalid('No component chosen.', 'Drop a .wasm file on the form, or choose one.');
      await checkComponent(component);
      setBusy(true);
      const body: { component_base64: string; manifest?: string } = {
        component_base64: await base64Of(component),
      };
      if (manifest) body.manifest = await manifest.text();
      const result = await api<DeployResult>('PUT', `/v1/apps/${seg(target)}`, body);
      setDone(result);
      onDeployed?.(result);
    } catch (failure) {
      setError(asApiError(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="deploy" aria-label={app ? `Deploy a new version of ${app}` : 'Deploy an app'} onSubmit={deploy}>
      {app ? null : (
        <label class="field">
          Name
          <input
            type="text"
            name="name"
            value={name}
            required
            autocomplete="off"
            spellcheck={false}
            placeholder="e.g. hello"
            onInput={(e) => setName((e.target as HTMLInputElement).value)}
          />
        </label>
      )}
      <FileField label="Component (.wasm)" name="component" accept=".wasm,application/wasm" file={component} onFile={setComponent} />
      <FileField label="hearth.toml (optional)" name="manifest" accept=".toml,text/plain" file={manifest} onFile={setManifest} />
      <div>
        <button type="submit" disabled={busy}>
          {busy ? 'Deploying…' : 'Deploy'}
        </button>
      </div>
      <ErrorNote error={error} />
      {done ? (
        <p class="note" role="status" data-deployed={done.app}>
          Deployed <a href={`/ui/apps/${seg(done.app)}`}>{done.app}</a> v{done.version.number}
          {done.compiled ? `, compiled in ${Math.round(done.duration_ms)} ms` : ' (compiled before)'}.
        </p>
      ) : null}
    </form>
  );
}
