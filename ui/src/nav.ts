// Moving between views without a page load, from anywhere: the shell
// (main.tsx) follows `popstate`, which a navigation here also fires.

/** Shows the view at `path` (`/ui/...`), as following a link would. */
export function navigate(path: string) {
  if (path !== location.pathname) history.pushState(null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
}
