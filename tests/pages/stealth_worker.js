importScripts('stealth_probe.js');
// taken at start: the worker's first script; a worker started with ?nest starts one of its own
const atStart = stealthProbe();
if (location.search.includes('nest')) {
  const inner = new Worker('stealth_worker.js');
  inner.onmessage = (e) => postMessage({...atStart, nested: e.data});
} else {
  postMessage(atStart);
}
