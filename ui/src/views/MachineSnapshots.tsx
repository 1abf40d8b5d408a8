// A machine's snapshots, on its page: take one (the machine is paused to
// disk and stopped), restore one as a new machine, delete one. The list
// follows `snapshots/` in the event stream.

import { useState } from 'preact/hooks';
import { type Machine as MachineRecord } from '../api';
import { useAction, useResource } from '../hooks';
import { NAME_PATTERN, type Snapshot, deleteSnapshot, restoreSnapshot, snapshotName, takeSnapshot } from '../machines';
import { ErrorNote, ago, bytes } from './common';
import './snapshots.css';

const NAME_TITLE = '1 to 63 lowercase letters, digits and dashes, not starting or ending with a dash';

type Outcome = { kind: 'taken'; snapshot: Snapshot } | { kind: 'restored'; machine: string; from: string } | null;

/** A snapshot's or a machine's name, checked by the browser against the
 * daemon's rule before anything is sent. */
function NameField(props: { label: string; field: string; value: string; set: (v: string) => void; disabled: boolean }) {
  return (
    <label class="field">
      {props.label}
      <input
        name={props.field}
        value={props.value}
        required
        pattern={NAME_PATTERN}
        maxLength={63}
        title={NAME_TITLE}
        autoFocus
        disabled={props.disabled}
        onInput={(e) => props.set((e.target as HTMLInputElement).value)}
      />
    </label>
  );
}

function TakeForm({ machine, done, cancel }: { machine: string; done: (s: Snapshot) => void; cancel: () => void }) {
  const [name, setName] = useState(() => snapshotName(machine));
  const { busy, error, run } = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void run(async () => done(await takeSnapshot(machine, name)));
  };
  return (
    <form class="snapshot-form" aria-label={`Take a snapshot of ${machine}`} onSubmit={submit}>
      <NameField label="Snapshot name" field="snapshot" value={name} set={setName} disabled={busy} />
      <p class="drop-hint">The machine is paused, its memory and disk are saved, and it stops.</p>
      <div class="actions">
        <button type="submit" disabled={busy}>
          {busy ? 'Saving…' : 'Save the snapshot'}
        </button>
        <button type="button" class="quiet" disabled={busy} onClick={cancel}>
          Cancel
        </button>
      </div>
      {busy ? (
        <p class="snapshot-progress" role="status" aria-busy="true">
          Saving <span class="mono">{machine}</span> to <span class="mono">{name}</span>: pausing it and writing its
          memory and disk…
        </p>
      ) : null}
      <ErrorNote error={error} />
    </form>
  );
}

function RestoreForm({ snapshot, done, cancel }: { snapshot: Snapshot; done: (m: string) => void; cancel: () => void }) {
  const [name, setName] = useState('');
  const { busy, error, run } = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    void run(async () => done((await restoreSnapshot(snapshot.name, name)).name));
  };
  return (
    <form class="snapshot-form" aria-label={`Restore ${snapshot.name} as a new machine`} onSubmit={submit}>
      <NameField label="New machine’s name" field="machine" value={name} set={setName} disabled={busy} />
      <div class="actions">
        <button type="submit" disabled={busy}>
          {busy ? 'Restoring…' : 'Restore'}
        </button>
        <button type="button" class="quiet" disabled={busy} onClick={cancel}>
          Cancel
        </button>
      </div>
      {busy ? (
        <p class="snapshot-progress" role="status" aria-busy="true">
          Restoring <span class="mono">{snapshot.name}</span>: loading its memory and resuming it…
        </p>
      ) : null}
      <ErrorNote error={error} />
    </form>
  );
}

export function MachineSnapshots({ machine }: { machine: MachineRecord }) {
  const { data, error: listError } = useResource<{ snapshots: Snapshot[] }>('/v1/snapshots', ['snapshots/']);
  const [taking, setTaking] = useState(false);
  const [restoring, setRestoring] = useState<string | null>(null);
  const deletion = useAction();
  const deleting = deletion.running;
  const [outcome, setOutcome] = useState<Outcome>(null);
  const mine = (data?.snapshots ?? []).filter((s) => s.machine === machine.name).sort((a, b) => b.created_at - a.created_at);
  const running = machine.state === 'running';

  const remove = (snapshot: string) =>
    deletion.run(
      async () => {
        await deleteSnapshot(snapshot);
        setOutcome(null);
      },
      { confirm: `Delete snapshot ${snapshot}? Its memory and disk go with it.`, what: snapshot },
    );

  return (
    <div class="snapshots">
      {taking ? (
        <TakeForm
          machine={machine.name}
          done={(snapshot) => {
            setTaking(false);
            setOutcome({ kind: 'taken', snapshot });
          }}
          cancel={() => setTaking(false)}
        />
      ) : (
        <div class="actions">
          <button type="button" disabled={!running} onClick={() => (setTaking(true), setOutcome(null))}>
            Snapshot
          </button>
          {!running ? <span class="reason">A snapshot is taken of a running machine.</span> : null}
        </div>
      )}
      {outcome?.kind === 'taken' ? (
        <p class="note" role="status" data-snapshot-taken={outcome.snapshot.name}>
          Saved <span class="mono">{outcome.snapshot.name}</span> ({bytes(outcome.snapshot.size_bytes)});{' '}
          <span class="mono">{machine.name}</span> is stopped. Restore the snapshot to resume it where it was.
        </p>
      ) : null}
      {outcome?.kind === 'restored' ? (
        <p class="note" role="status" data-snapshot-restored={outcome.machine}>
          Restored <span class="mono">{outcome.from}</span> as{' '}
          <a href={`/ui/machines/${encodeURIComponent(outcome.machine)}`}>machine {outcome.machine}</a>.
        </p>
      ) : null}
      <ErrorNote error={deletion.error} />
      {data === null ? (
        listError ? null : <p aria-busy="true">Reading the snapshots…</p>
      ) : mine.length === 0 ? (
        <p class="empty">No snapshots of this machine.</p>
      ) : (
        <div class="scroll" role="region" aria-label={`Snapshots of ${machine.name}`} tabIndex={0}>
          <table id="snapshots">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Taken</th>
                <th scope="col">Size</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {mine.map((s) => (
                <tr key={s.name} data-snapshot={s.name}>
                  <th scope="row" class="mono">
                    {s.name}
                  </th>
                  <td>{ago(s.created_at * 1000)}</td>
                  <td>{bytes(s.size_bytes)}</td>
                  <td>
                    {restoring === s.name ? (
                      <RestoreForm
                        snapshot={s}
                        done={(name) => {
                          setRestoring(null);
                          setOutcome({ kind: 'restored', machine: name, from: s.name });
                        }}
                        cancel={() => setRestoring(null)}
                      />
                    ) : (
                      <div class="actions">
                        <button
                          type="button"
                          disabled={deleting !== null}
                          aria-label={`Restore as… (${s.name})`}
                          onClick={() => (setRestoring(s.name), setOutcome(null))}
                        >
                          Restore as…
                        </button>
                        <button
                          type="button"
                          class="danger"
                          disabled={deleting !== null}
                          aria-label={`Delete ${s.name}`}
                          onClick={() => remove(s.name)}
                        >
                          {deleting === s.name ? 'Deleting…' : 'Delete'}
                        </button>
                      </div>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
