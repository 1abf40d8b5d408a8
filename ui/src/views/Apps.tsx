import { seg, type AppSummary as App } from '../api';
import { useLive, useResource, useTitle } from '../hooks';
import { Links, LiveBadge, ago, list } from './common';
import { DeployForm } from './Deploy';

function serving(app: App): string {
  if (app.serving === null) return 'not serving';
  if (app.serving !== app.active) return `v${app.serving} (v${app.active} is loading)`;
  return `v${app.serving}`;
}

export function Apps() {
  useTitle('Apps');
  const live = useLive();
  const apps = useResource<{ apps: App[] }>('/v1/apps', ['apps/records/']).data?.apps ?? null;
  return (
    <section aria-labelledby="apps-title">
      <div class="heading">
        <h1 id="apps-title" tabIndex={-1}>
          Apps
        </h1>
        <LiveBadge connection={live.connection} />
      </div>
      {apps === null ? (
        <p aria-busy="true">Reading apps…</p>
      ) : (
        <div class="scroll" role="region" aria-label="Apps" tabIndex={0}>
          <table id="apps">
            <caption>WebAssembly apps and the version each serves</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Serving</th>
                <th scope="col">Routes</th>
                <th scope="col">Addresses</th>
                <th scope="col">Versions</th>
                <th scope="col">Deployed</th>
              </tr>
            </thead>
            <tbody>
              {apps.map((app) => (
                <tr key={app.name} data-app={app.name}>
                  <th scope="row" class="mono">
                    <a href={`/ui/apps/${seg(app.name)}`}>{app.name}</a>
                  </th>
                  <td>
                    <span class={`tag tag-${app.serving === null ? 'failed' : 'running'}`}>{serving(app)}</span>
                    {app.error ? <div class="reason">{app.error}</div> : null}
                  </td>
                  <td class="mono">{list(app.routes)}</td>
                  <td class="mono">
                    <Links urls={app.urls} />
                  </td>
                  <td class="num">{app.version_count}</td>
                  <td>{ago(app.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {apps.length === 0 ? (
            <p class="empty">
              No apps. Deploy one below, or with <code>hearth app deploy NAME app.wasm</code>.
            </p>
          ) : null}
        </div>
      )}
      <h2>Deploy an app</h2>
      <p>A new app, or a new version of one of the above: its component, and its hearth.toml if it has one.</p>
      <DeployForm />
    </section>
  );
}
