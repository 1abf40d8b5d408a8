// A form that creates a machine, as `hearth machine run` does: an image
// from the daemon's, a name, its size, a network and forwarded ports; it
// starts it at once unless told not to, then opens its page.

import { useEffect, useState } from 'preact/hooks';
import { api, asApiError, seg } from '../api';
import { setError as showError } from '../errors';
import { useAction } from '../hooks';
import { navigate } from '../nav';
import { ErrorNote, bytes } from './common';

interface Image {
  name: string;
  size_bytes: number;
}

/** `8080:80, 5353:53/udp` as the API's list. */
function portList(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((p) => p.trim())
    .filter(Boolean);
}

export function NewMachine() {
  const [images, setImages] = useState<Image[] | null>(null);
  const [networks, setNetworks] = useState<string[]>([]);
  const [name, setName] = useState('');
  const [image, setImage] = useState('');
  const [cpus, setCpus] = useState('1');
  const [memory, setMemory] = useState('512');
  const [network, setNetwork] = useState('default');
  const [ports, setPorts] = useState('');
  const [start, setStart] = useState(true);
  const { busy, error, run } = useAction();

  useEffect(() => {
    // Images live on the daemon's disk, not in the store: read once here.
    // What cannot be read goes to the banner, as a view's lists do.
    api<{ images: Image[] }>('GET', '/v1/images')
      .then((body) => setImages(body.images))
      .catch((failure) => showError(asApiError(failure)));
    api<{ networks: { name: string }[] }>('GET', '/v1/networks')
      .then((body) => setNetworks(body.networks.map((n) => n.name)))
      .catch((failure) => showError(asApiError(failure)));
  }, []);

  const chosen = image || images?.[0]?.name || '';
  const create = (event: Event) => {
    event.preventDefault();
    const body: Record<string, unknown> = {
      image: chosen,
      cpus: Number(cpus),
      memory_mib: Number(memory),
      no_start: !start,
      ports: portList(ports),
    };
    if (name.trim()) body.name = name.trim();
    if (network === '') body.no_network = true;
    else if (network !== 'default') body.networks = [{ network }];
    void run(async () => {
      const made = await api<{ name: string }>('POST', '/v1/machines', body);
      navigate(`/ui/machines/${seg(made.name)}`);
    });
  };

  if (images !== null && images.length === 0) {
    return (
      <p class="empty" id="no-images">
        There is no image to make a machine from yet. Pull one with <code>hearth image pull debian:bookworm</code> or
        build one with <code>hearth image build</code>.
      </p>
    );
  }
  return (
    <form class="new-machine" aria-label="Create a machine" onSubmit={create}>
      <label class="field">
        Image
        <select name="image" value={chosen} disabled={images === null} onChange={(e) => setImage((e.target as HTMLSelectElement).value)}>
          {(images ?? []).map((i) => (
            <option key={i.name} value={i.name}>
              {i.name} ({bytes(i.size_bytes, { unit: 'MiB', digits: 0 })})
            </option>
          ))}
        </select>
      </label>
      <label class="field">
        Name (optional)
        <input
          type="text"
          name="name"
          value={name}
          placeholder="a generated name"
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setName((e.target as HTMLInputElement).value)}
        />
      </label>
      <div class="pair">
        <label class="field">
          CPUs
          <input type="number" name="cpus" min={1} value={cpus} onInput={(e) => setCpus((e.target as HTMLInputElement).value)} />
        </label>
        <label class="field">
          Memory (MiB)
          <input
            type="number"
            name="memory"
            min={64}
            step={64}
            value={memory}
            onInput={(e) => setMemory((e.target as HTMLInputElement).value)}
          />
        </label>
      </div>
      <label class="field">
        Network
        <select name="network" value={network} onChange={(e) => setNetwork((e.target as HTMLSelectElement).value)}>
          {networks.includes('default') ? null : <option value="default">default</option>}
          {networks.map((n) => (
            <option key={n} value={n}>
              {n}
            </option>
          ))}
          <option value="">none</option>
        </select>
      </label>
      <label class="field">
        Forwarded ports (optional)
        <input
          type="text"
          name="ports"
          value={ports}
          placeholder="HOSTPORT:GUESTPORT, e.g. 8080:80"
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setPorts((e.target as HTMLInputElement).value)}
        />
      </label>
      <label class="check">
        <input type="checkbox" name="start" checked={start} onChange={(e) => setStart((e.target as HTMLInputElement).checked)} />{' '}
        Start it now
      </label>
      <div>
        <button type="submit" disabled={busy || !chosen}>
          {busy ? 'Creating…' : 'Create machine'}
        </button>
      </div>
      <ErrorNote error={error} />
    </form>
  );
}
