// Connect Puppeteer to an opencone computer's /ws endpoint, open a page, print its title, disconnect.
// usage: node puppeteer_title.mjs <browserWSEndpoint> <url>
import puppeteer from "puppeteer-core";

const [endpoint, url] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const page = await browser.newPage();
await page.goto(url, { waitUntil: "load" });
const title = await page.title();
const pages = (await browser.pages()).length;
await browser.disconnect();
console.log(JSON.stringify({ title, pages }));
