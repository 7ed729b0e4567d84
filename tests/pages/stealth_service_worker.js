importScripts('stealth_probe.js');
const atStart = stealthProbe();  // the service worker's first script
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
// what it reported at start, and what it reports now
self.addEventListener('message', (e) => e.source.postMessage({...atStart, now: stealthProbe()}));
