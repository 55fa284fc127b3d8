// What the views share: the live event bus, navigation, and the marks the
// browser test reads.

// live carries the workspace's event stream (app.js reads it) to whichever
// view listens: one stream per tab, whatever page is open.
export const live = new EventTarget();

// ready marks that a view has painted its data.
export function ready(name) {
  performance.mark(`ready:${name}`);
  document.body.dataset.ready = name;
}

// go opens path with the given query (empty values left out); replace
// changes the current history entry instead of adding one.
export function go(path, params = {}, replace = false) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v !== undefined && v !== null)).toString();
  const url = path + (q ? '?' + q : '');
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  window.dispatchEvent(new Event('route'));
}
