// Drives two SMART standalone launches of the static app (launch.html -> index.html) through
// ironfhir's authorization pages in one headless Chromium context, as a person would: the
// second launch runs in a new tab of the same browser (same cookies, its own sessionStorage),
// so the authorization server's sign-in session must spare it the login page.
//
// Configuration (environment):
//   SMART_APP_URL       where the static app is served, e.g. http://127.0.0.1:8123/ (required)
//   SMART_ISS           the FHIR base URL (required)
//   SMART_USERNAME, SMART_PASSWORD   the user to sign in as (required)
//   SMART_ROLES         comma-separated role per launch, e.g. PractitionerRole/a,PractitionerRole/b
//   SMART_PATIENT       patient id to pick on the patient picker (required)
//   SMART_CLIENT_ID     default smart-browser-app
//   SMART_SCOPE         default "launch/patient openid fhirUser offline_access patient/*.rs user/*.rs"
//   SMART_ARTIFACTS     screenshot folder (default ../artifacts/smart-browser next to this file)
//   SMART_CHROMIUM      browser binary (default /usr/bin/chromium, Debian's package)
//   SMART_STEP_TIMEOUT_MS  how long one page may take to appear (default 45000)
//
// Prints one JSON summary on stdout (also written to SMART_ARTIFACTS/summary.json) and exits 0
// when the flow ran to its end, 1 when it stopped early (the summary's "error" says where).

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const env = process.env;

function required(name) {
  const v = env[name];
  if (!v) {
    console.error(`drive.mjs: ${name} is required`);
    process.exit(2);
  }
  return v;
}

const cfg = {
  appUrl: required("SMART_APP_URL").replace(/\/*$/, "/"),
  iss: required("SMART_ISS"),
  username: required("SMART_USERNAME"),
  password: required("SMART_PASSWORD"),
  roles: required("SMART_ROLES").split(",").map(s => s.trim()).filter(Boolean),
  patient: required("SMART_PATIENT"),
  clientId: env.SMART_CLIENT_ID || "smart-browser-app",
  scope: env.SMART_SCOPE || "launch/patient openid fhirUser offline_access patient/*.rs user/*.rs",
  artifacts: resolve(env.SMART_ARTIFACTS || join(HERE, "..", "artifacts", "smart-browser")),
  chromium: env.SMART_CHROMIUM || "/usr/bin/chromium",
  stepTimeout: Number(env.SMART_STEP_TIMEOUT_MS || 45000),
};
if (cfg.roles.length !== 2) {
  console.error("drive.mjs: SMART_ROLES needs exactly two roles (one per launch)");
  process.exit(2);
}
mkdirSync(cfg.artifacts, { recursive: true });

const issOrigin = new URL(cfg.iss).origin;
const appOrigin = new URL(cfg.appUrl).origin;

const summary = {
  ok: false,
  error: null,
  config: { appUrl: cfg.appUrl, iss: cfg.iss, clientId: cfg.clientId, scope: cfg.scope,
            roles: cfg.roles, patient: cfg.patient, artifacts: cfg.artifacts },
  launches: [],
  rerunAfterSecondLaunch: null,
  refresh: null,
  network: [],  // requests to the server: method, url, status (bodies of errors and token calls)
  console: [],  // browser console errors and page errors (CORS failures show up here)
};

const sleep = ms => new Promise(r => setTimeout(r, ms));

// Which page is showing: one of the server's forms, the app's result, or nothing known yet.
// A document we already acted on carries window.__driveSeen and counts as "nothing yet".
function detect() {
  if (window.__driveSeen) return null;
  const q = s => document.querySelector(s);
  if (q("#result[data-done]")) return "app";
  if (q("#error[data-done]")) return "launch-error";
  if (q("form#login")) return "login";
  if (q("form#role-picker")) return "role-picker";
  if (q("form#patient-picker")) return "patient-picker";
  if (q("form#consent")) return "consent";
  return document.readyState === "complete" ? "unknown" : null;
}

async function pageText(page) {
  try {
    return (await page.evaluate(() => document.body ? document.body.innerText : "")).slice(0, 2000);
  } catch (e) {
    return `(could not read page: ${e.message})`;
  }
}

// Waits until a known page shows. An unknown, fully loaded page on the server's origin (an
// error page) that stays for 3 s ends the wait early.
async function waitForPage(page) {
  const deadline = Date.now() + cfg.stepTimeout;
  let unknownSince = null;
  while (Date.now() < deadline) {
    let kind = null;
    try {
      kind = await page.evaluate(detect);
    } catch {
      kind = null; // navigating: the execution context went away
    }
    if (kind && kind !== "unknown") return kind;
    const onServer = page.url().startsWith(issOrigin) && issOrigin !== appOrigin;
    if (kind === "unknown" && onServer) {
      unknownSince ??= Date.now();
      if (Date.now() - unknownSince > 3000) return "unknown";
    } else {
      unknownSince = null;
    }
    await sleep(100);
  }
  return "timeout";
}

function redact(url) {
  // the code and state are single-use and short-lived, but keep the log tidy
  return url.replace(/([?&](code|state)=)[^&#]+/g, "$1…");
}

async function markSeen(page) {
  await page.evaluate(() => { window.__driveSeen = true; });
}

async function submit(page, formSelector) {
  const buttons = page.locator(
    `${formSelector} button[type=submit], ${formSelector} input[type=submit], ` +
    `${formSelector} button:not([type])`);
  if (await buttons.count() === 0) throw new Error(`${formSelector} has no submit button`);
  await buttons.first().click();
}

async function radioValues(page, name) {
  return page.$$eval(`input[type=radio][name="${name}"]`, els => els.map(e => e.value));
}

async function chooseRadio(page, formSelector, name, value) {
  const offered = await radioValues(page, name);
  if (!offered.includes(value)) {
    throw new Error(`${formSelector}: no radio ${name}=${value}; offered: ${JSON.stringify(offered)}`);
  }
  await page.locator(`${formSelector} input[type=radio][name="${name}"][value="${value}"]`).check();
  return offered;
}

async function runLaunch(page, n, role) {
  const rec = {
    n, role, pages: [], sawLogin: false, sawRolePicker: false, sawPatientPicker: false,
    sawConsent: false, rolesOffered: null, patientsOffered: null, result: null,
  };
  summary.launches.push(rec);
  const launch = new URL("launch.html", cfg.appUrl);
  launch.searchParams.set("iss", cfg.iss);
  launch.searchParams.set("clientId", cfg.clientId);
  launch.searchParams.set("scope", cfg.scope);
  await page.goto(launch.href);

  for (let step = 1; step <= 12; step++) {
    const kind = await waitForPage(page);
    const shot = join(cfg.artifacts, `launch${n}-${String(step).padStart(2, "0")}-${kind}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    rec.pages.push({ kind, url: redact(page.url()), screenshot: shot });

    if (kind === "app") {
      rec.result = JSON.parse(await page.locator("#result").textContent());
      return rec;
    }
    if (kind === "launch-error" || kind === "unknown" || kind === "timeout") {
      throw new Error(`launch ${n}: stopped on ${kind} page ${redact(page.url())}: ` +
                      (await pageText(page)));
    }
    await markSeen(page);
    if (kind === "login") {
      if (rec.sawLogin) {
        throw new Error(`launch ${n}: login page shown again (sign-in refused?): ` +
                        (await pageText(page)));
      }
      rec.sawLogin = true;
      await page.fill("form#login [name=username]", cfg.username);
      await page.fill("form#login [name=password]", cfg.password);
      await submit(page, "form#login");
    } else if (kind === "role-picker") {
      rec.sawRolePicker = true;
      rec.rolesOffered = await chooseRadio(page, "form#role-picker", "role", role);
      await submit(page, "form#role-picker");
    } else if (kind === "patient-picker") {
      rec.sawPatientPicker = true;
      rec.patientsOffered = await chooseRadio(page, "form#patient-picker", "patient", cfg.patient);
      await submit(page, "form#patient-picker");
    } else if (kind === "consent") {
      rec.sawConsent = true;
      const approve = page.locator('form#consent button[name="decision"][value="approve"]');
      if (await approve.count() !== 1) {
        throw new Error(`launch ${n}: consent form has no button name=decision value=approve`);
      }
      await approve.click();
    }
  }
  throw new Error(`launch ${n}: no app result after 12 pages`);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    args: ["--no-sandbox"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
    context.on("console", msg => {
      if (msg.type() === "error" || msg.type() === "warning") {
        summary.console.push({ type: msg.type(), text: msg.text().slice(0, 500),
                               url: msg.location().url });
      }
    });
    context.on("weberror", err => summary.console.push({ type: "pageerror",
                                                         text: String(err.error()).slice(0, 500) }));
    context.on("response", async resp => {
      const req = resp.request();
      if (!req.url().startsWith(issOrigin)) return;
      const entry = { method: req.method(), url: redact(req.url()), status: resp.status() };
      const isToken = req.method() === "POST" && /token/.test(new URL(req.url()).pathname);
      if (isToken) {
        entry.requestBody = (req.postData() || "").replace(
          /((?:code|code_verifier|refresh_token)=)[^&]+/g, "$1…");
      }
      if (resp.status() >= 400 || isToken) {
        entry.body = (await resp.text().catch(e => `(body unavailable: ${e.message})`)).slice(0, 1500);
      }
      summary.network.push(entry);
    });
    context.on("requestfailed", req => {
      if (req.url().startsWith(issOrigin)) {
        summary.network.push({ method: req.method(), url: redact(req.url()),
                               failed: req.failure() && req.failure().errorText });
      }
    });

    const page1 = await context.newPage();
    await runLaunch(page1, 1, cfg.roles[0]);

    // Second launch: new tab, same cookies, its own sessionStorage, the other role.
    const page2 = await context.newPage();
    await runLaunch(page2, 2, cfg.roles[1]);

    // Both tokens side by side: the first page's token still works after the second launch.
    summary.rerunAfterSecondLaunch = {
      page1: await page1.evaluate(() => window.rerun()),
      page2: await page2.evaluate(() => window.rerun()),
    };
    await page1.bringToFront();
    await page1.screenshot({ path: join(cfg.artifacts, "launch1-rerun.png"), fullPage: true });

    // The refresh token (offline_access) of the first launch gives a new working token.
    summary.refresh = await page1.evaluate(() => window.refreshAndRerun());
    summary.ok = true;
  } finally {
    await browser.close();
  }
}

let code = 0;
try {
  await main();
} catch (err) {
  summary.error = String(err && err.stack || err);
  code = 1;
}
const text = JSON.stringify(summary, null, 2);
writeFileSync(join(cfg.artifacts, "summary.json"), text);
process.stdout.write(text + "\n");
process.exit(code);
