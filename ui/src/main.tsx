// The dashboard's shell: navigation, the error banner, and one view.

import { Fragment, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { asApiError, loadSession } from './api';
import { setError, useError } from './errors';
import { live } from './live';
import { navigate } from './nav';
import { App as AppPage } from './views/App';
import { Alerts } from './views/Alerts';
import { Apps } from './views/Apps';
import { Config } from './views/Config';
import { Events } from './views/Events';
import { Machine } from './views/Machine';
import { Machines } from './views/Machines';
import { Network } from './views/Network';
import { Networks } from './views/Networks';
import { Overview } from './views/Overview';
import { Run } from './views/Run';
import { Search } from './views/Search';
import { Service } from './views/Service';
import { Services } from './views/Services';
import { Workflows } from './views/Workflows';
import './style.css';

interface Route {
  path: string;
  label: string;
  view: () => preact.JSX.Element;
}

/** The views, in the order the navigation lists them. */
const ROUTES: Route[] = [
  { path: '/ui/', label: 'Overview', view: Overview },
  { path: '/ui/machines', label: 'Machines', view: Machines },
  { path: '/ui/networks', label: 'Networks', view: Networks },
  { path: '/ui/apps', label: 'Apps', view: Apps },
  { path: '/ui/workflows', label: 'Workflows', view: Workflows },
  { path: '/ui/services', label: 'Services', view: Services },
  { path: '/ui/config', label: 'Config', view: Config },
  { path: '/ui/alerts', label: 'Alerts', view: Alerts },
  { path: '/ui/events', label: 'Events', view: Events },
];

/** Pages of one thing, under a view of the navigation: `/ui/apps/NAME`. */
interface ItemRoute {
  prefix: string;
  /** The navigation's view it belongs to. */
  under: string;
  view: (props: { name: string }) => preact.JSX.Element;
}

const ITEMS: ItemRoute[] = [
  { prefix: '/ui/machines/', under: '/ui/machines', view: Machine },
  { prefix: '/ui/networks/', under: '/ui/networks', view: Network },
  { prefix: '/ui/apps/', under: '/ui/apps', view: AppPage },
  { prefix: '/ui/runs/', under: '/ui/workflows', view: Run },
  { prefix: '/ui/services/', under: '/ui/services', view: Service },
];

interface Found {
  route: Route;
  /** The page, with its item's name when it has one. */
  page: preact.JSX.Element;
  /** Distinguishes two pages of one kind, so that one is not reused for the other. */
  key: string;
}

function routeOf(pathname: string): Found | null {
  const path = pathname === '/ui' || pathname === '/ui/' ? '/ui/' : pathname.replace(/\/+$/, '');
  const route = ROUTES.find((r) => r.path === path);
  if (route) {
    const View = route.view;
    return { route, page: <View />, key: path };
  }
  for (const item of ITEMS) {
    const rest = path.startsWith(item.prefix) ? path.slice(item.prefix.length) : '';
    if (rest === '' || rest.includes('/')) continue;
    let name: string;
    try {
      name = decodeURIComponent(rest);
    } catch {
      return null;
    }
    const under = ROUTES.find((r) => r.path === item.under);
    if (!under) return null;
    const View = item.view;
    return { route: under, page: <View name={name} />, key: path };
  }
  return null;
}

function usePath(): [string, (path: string) => void] {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const onPop = () => setPath(location.pathname);
    addEventListener('popstate', onPop);
    return () => removeEventListener('popstate', onPop);
  }, []);
  return [path, navigate];
}

function Banner() {
  const error = useError();
  if (!error) return null;
  return (
    <div class="banner" role="alert">
      <p class="banner-message">
        <strong>{error.message}</strong>
        {error.code && error.code !== 'unreachable' ? <span class="code"> ({error.code})</span> : null}
      </p>
      {error.hint ? <p class="banner-hint">{error.hint}</p> : null}
      <button type="button" class="quiet" onClick={() => setError(null)}>
        Dismiss
      </button>
    </div>
  );
}

function NotFound() {
  return (
    <section>
      <h1 tabIndex={-1}>Not found</h1>
      <p>
        There is no view at this address. <a href="/ui/">Go to the overview.</a>
      </p>
    </section>
  );
}

function App() {
  const [path, go] = usePath();
  const route = routeOf(path);
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);

  useEffect(() => {
    loadSession().catch((error) => setError(asApiError(error)));
    void live.start();
  }, []);

  // After a navigation, move focus to the new view's heading, as a page
  // load would, so keyboard and screen reader users know where they are.
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    main.current?.querySelector<HTMLElement>('h1')?.focus();
  }, [path]);

  // Links to other views switch views in place, keeping the live stream.
  useEffect(() => {
    const onClick = (event: MouseEvent) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      const link = (event.target as Element | null)?.closest?.('a');
      const href = link?.getAttribute('href');
      if (!href || !href.startsWith('/ui/') || routeOf(href) === null) return;
      event.preventDefault();
      go(href);
    };
    document.addEventListener('click', onClick);
    return () => document.removeEventListener('click', onClick);
  }, []);


  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/ui/">
          hearth
        </a>
        <nav aria-label="Views">
          <ul>
            {ROUTES.map((r) => (
              <li key={r.path}>
                <a href={r.path} aria-current={route?.route === r ? (route.key === r.path ? 'page' : 'true') : undefined}>
                  {r.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <Search />
      </header>
      <Banner />
      <main id="main" ref={main} tabIndex={-1}>
        <Fragment key={route?.key ?? 'not-found'}>{route?.page ?? <NotFound />}</Fragment>
      </main>
    </>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
